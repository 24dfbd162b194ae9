//! Join and leave under traffic: a 6th node joins while clients write and another node is
//! decommissioned, and the old owners clean up what they gave up; no acknowledged write is
//! lost, preference lists no longer name the departed node, and the newcomer holds locally the
//! keys it serves.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kv_tests::{spawn_writer, Cluster, ClusterOpts, Ws};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_joins_and_another_leaves_under_load_without_losing_writes() {
    // The nodes clean up what they gave the newcomer a second after its join, under the load.
    let mut opts = ClusterOpts::default();
    opts.extra
        .extend(["--cleanup-delay-s", "1"].map(String::from));
    let mut cluster = Cluster::start(5, opts);
    let mut seed = Ws::connect(&cluster.nodes[0].url()).await;
    for i in 0..500 {
        let r = seed
            .request(json!({"op": "put", "key": format!("pre{i}"), "value": format!("pre{i}")}))
            .await;
        assert_eq!(r["ok"], true, "{r}");
    }

    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for c in 0..2 {
        writers.push(spawn_writer(
            cluster.nodes[c].url(),
            format!("live{c}-"),
            Duration::from_millis(2),
            stop.clone(),
        ));
    }

    // A sixth node joins: it streams its ranges in and only then enters the ring.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let newcomer = tokio::task::block_in_place(|| cluster.add_node(false));
    let new_id = cluster.nodes[newcomer].id.clone();

    // n5 leaves: it hands its ranges over, then drops out of the ring.
    let d = seed
        .request(json!({"op": "decommission", "node": "n5"}))
        .await;
    assert_eq!(d["ok"], true, "{d}");
    assert!(d["moved_keys"].as_u64().unwrap() > 0, "{d}");
    // The writers keep going until the cleanups have dropped what the newcomer took over.
    let serving = [0usize, 1, 2, 3, newcomer];
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let cleaned = loop {
        let cleaned: u64 = serving
            .iter()
            .map(|&i| kv_tests::metric(&cluster.nodes[i].addr, "kv_cleanup_keys_removed_total"))
            .sum();
        if cleaned > 0 || std::time::Instant::now() > deadline {
            break cleaned;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(cleaned > 0, "no cleanup ran within 60 s of the join");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acked: Vec<String> = (0..500).map(|i| format!("pre{i}")).collect();
    for w in writers {
        acked.extend(w.await.unwrap());
    }

    // Every node still serving agrees n5 is gone from the ring.
    for idx in [0usize, 1, 2, 3, newcomer] {
        let mut ws = Ws::connect(&cluster.nodes[idx].url()).await;
        let ring = ws.request(json!({"op": "ring"})).await;
        let ids: Vec<&str> = ring["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["id"].as_str().unwrap())
            .collect();
        assert!(
            !ids.contains(&"n5"),
            "{} still has n5 in its ring: {ring}",
            cluster.nodes[idx].id
        );
        assert!(ids.contains(&new_id.as_str()), "{ring}");
    }

    let mut local = Ws::connect(&cluster.nodes[newcomer].url()).await;
    let mut served = 0;
    for key in &acked {
        let r = seed.request(json!({"op": "get", "key": key})).await;
        assert_eq!(
            r["values"],
            json!([key]),
            "acknowledged write {key} lost: {r}"
        );
        let pl = seed.request(json!({"op": "ring", "key": key})).await;
        let prefs: Vec<&str> = pl["preference_list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap())
            .collect();
        assert!(!prefs.contains(&"n5"), "{key} still names n5: {pl}");
        if prefs.contains(&new_id.as_str()) {
            served += 1;
            let r = local
                .request(json!({"op": "get", "key": key, "local": true}))
                .await;
            assert_eq!(
                r["values"],
                json!([key]),
                "{new_id} serves {key} but does not hold it: {r}"
            );
        }
    }
    assert!(served > 0, "the newcomer serves some keys");
    println!(
        "{} acknowledged writes checked; the newcomer serves {served} of them; cleanups \
         dropped {cleaned} keys under the load",
        acked.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decommission_interrupted_by_a_crash_resumes_after_restart() {
    let mut cluster = Cluster::start(4, ClusterOpts::default());
    let mut ws = Ws::connect(&cluster.nodes[0].url()).await;
    for i in 0..300 {
        let r = ws
            .request(json!({"op": "put", "key": format!("r{i}"), "value": format!("r{i}"), "w": 3}))
            .await;
        assert_eq!(r["ok"], true, "{r}");
    }
    let ready = |addr: &str| kv_tests::http_get_full(addr, "/ready").map(|(code, _)| code);
    assert_eq!(
        ready(&cluster.nodes[3].addr),
        Some(200),
        "a full member is ready"
    );
    // Start the decommission of n4 and crash n4 while it is leaving.
    let url = cluster.nodes[0].url();
    let pending = tokio::spawn(async move {
        let mut c = Ws::connect(&url).await;
        c.request(json!({"op": "decommission", "node": "n4"})).await
    });
    let identity = cluster.nodes[3].data_dir.join("node-identity.json");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&identity)
        .unwrap()
        .contains("\"leaving\": true")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "n4 never started leaving"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Leaving (or, if it was quick, already gone): no longer ready.
    assert_eq!(ready(&cluster.nodes[3].addr), Some(503));
    cluster.kill(3);
    let answer = pending.await.unwrap();
    assert_eq!(
        answer["ok"], false,
        "the interrupted decommission is not reported done: {answer}"
    );

    // Restarted, n4 finishes leaving by itself.
    cluster.restart(3);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let ring = ws.request(json!({"op": "ring"})).await;
        let gone = !ring["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["id"] == "n4");
        if gone
            && std::fs::read_to_string(&identity)
                .unwrap()
                .contains("\"left\": true")
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "n4 did not finish leaving: {ring}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for i in 0..300 {
        let r = ws
            .request(json!({"op": "get", "key": format!("r{i}"), "r": 3}))
            .await;
        assert_eq!(r["values"], json!([format!("r{i}")]), "{r}");
    }
}

/// A node that left the cluster and is started again on a wiped data dir under the same id is
/// a newcomer: it takes new tokens and streams in the data of its ranges before serving them,
/// instead of taking back the departed member's old place in the ring with none of its data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_departed_id_started_again_on_a_wiped_dir_joins_as_a_newcomer() {
    let mut cluster = Cluster::start(4, ClusterOpts::default());
    let mut ws = Ws::connect(&cluster.nodes[0].url()).await;
    for i in 0..300 {
        let r = ws
            .request(json!({"op": "put", "key": format!("d{i}"), "value": format!("d{i}"), "w": 3}))
            .await;
        assert_eq!(r["ok"], true, "{r}");
    }
    let identity = cluster.nodes[3].data_dir.join("node-identity.json");
    let tokens = |path: &std::path::Path| -> serde_json::Value {
        let id: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        id["tokens"].clone()
    };
    let old_tokens = tokens(&identity);
    let d = ws
        .request(json!({"op": "decommission", "node": "n4"}))
        .await;
    assert_eq!(d["ok"], true, "{d}");
    cluster.kill(3);
    std::fs::remove_dir_all(&cluster.nodes[3].data_dir).unwrap();
    cluster.restart(3);

    // It serves once it has joined (streamed its ranges): wait for it in the ring.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let ring = ws.request(json!({"op": "ring"})).await;
        let in_ring = ring["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["id"] == "n4");
        let ready = kv_tests::http_get_full(&cluster.nodes[3].addr, "/ready").map(|(code, _)| code)
            == Some(200);
        if in_ring && ready {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "n4 did not join again: {ring}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_ne!(
        tokens(&identity),
        old_tokens,
        "a newcomer takes new tokens, not the departed member's"
    );
    // Every key it now replicates is in its own store, without any repair.
    let mut local = Ws::connect(&cluster.nodes[3].url()).await;
    let mut owned = 0;
    for i in 0..300 {
        let key = format!("d{i}");
        let pl = ws.request(json!({"op": "ring", "key": key})).await;
        if !pl["preference_list"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n == "n4")
        {
            continue;
        }
        owned += 1;
        let r = local
            .request(json!({"op": "get", "key": key, "local": true}))
            .await;
        assert_eq!(r["values"], json!([key]), "n4 lacks {key}: {r}");
    }
    assert!(owned > 0, "n4 replicates some of the keys");
}

/// A decommissioned member is forgotten after `--forget-left-after-s`: gone from `status` on
/// every node, and its id is free for a newcomer, which joins and serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_left_is_forgotten_and_its_id_can_be_used_again() {
    let mut opts = ClusterOpts::default();
    opts.extra
        .extend(["--forget-left-after-s", "2"].map(String::from));
    let mut cluster = Cluster::start(4, opts);
    // Restarts give n4 later generations than a fresh start would have.
    for _ in 0..2 {
        cluster.stop(3);
        cluster.restart(3);
    }
    cluster.wait_converged(Duration::from_secs(60));
    let mut ws = Ws::connect(&cluster.nodes[0].url()).await;
    let d = ws
        .request(json!({"op": "decommission", "node": "n4"}))
        .await;
    assert_eq!(d["ok"], true, "{d}");
    cluster.stop(3);
    let listed = |status: &serde_json::Value| {
        status["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["id"] == "n4")
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut gone = true;
        for n in &cluster.nodes[..3] {
            let s = Ws::connect(&n.url())
                .await
                .request(json!({"op": "status"}))
                .await;
            gone &= !listed(&s);
        }
        if gone {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "n4 still listed after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Still forgotten a few gossip rounds later (nobody gossips it back).
    tokio::time::sleep(Duration::from_secs(3)).await;
    for n in &cluster.nodes[..3] {
        let s = Ws::connect(&n.url())
            .await
            .request(json!({"op": "status"}))
            .await;
        assert!(!listed(&s), "{} lists n4 again: {s}", n.id);
    }
    // A newcomer under the id joins.
    std::fs::remove_dir_all(&cluster.nodes[3].data_dir).unwrap();
    cluster.restart(3);
    cluster.wait_converged(Duration::from_secs(60));
    for n in &cluster.nodes[..3] {
        let s = Ws::connect(&n.url())
            .await
            .request(json!({"op": "status"}))
            .await;
        let n4 = s["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == "n4")
            .cloned();
        assert_eq!(n4.map(|m| m["state"].clone()), Some(json!("up")), "{s}");
    }
    let r = Ws::connect(&cluster.nodes[3].url())
        .await
        .request(json!({"op": "put", "key": "again", "value": "v", "w": 3}))
        .await;
    assert_eq!(r["ok"], true, "{r}");
}

//! Regression: a node restarted after a SIGKILL used to answer clients before gossip had told
//! it the ring. With a ring of itself alone it took every key as its own (N, and with it the
//! default W, capped at one) and acknowledged writes that then stayed on a node that is not a
//! replica of the key: reads never found them again and repair did not move them. Found by the
//! crash loop, where a just-restarted node answered `W=2 exceeds the 1 replicas of the key`.
//!
//! The window is made wide and deterministic with a partition: the node restarts cut off from
//! its peers, and clients write through it meanwhile.
//!
//! Needs root (network namespaces), like `fault_injection.rs`.

use std::time::Duration;

use kv_tests::checker::Conn;
use kv_tests::faults::FaultCluster;
use kv_tests::ClusterOpts;
use serde_json::{json, Value};

fn opts() -> ClusterOpts {
    ClusterOpts {
        sync: "always",
        extra: [
            "--gossip-interval-ms",
            "300",
            "--anti-entropy-interval-s",
            "0",
        ]
        .map(String::from)
        .to_vec(),
        ..ClusterOpts::default()
    }
}

/// Restarts n5 cut off from the others for `cut`, writing 60 keys through it (default W) from
/// the moment it accepts clients; after healing and repair, returns the acknowledged keys that
/// a read with R=3 does not find, and the answers.
async fn writes_through_a_node_restarted_alone(cut: Duration) -> (Vec<String>, Vec<Value>) {
    let cluster = tokio::task::spawn_blocking(|| FaultCluster::start(5, opts()))
        .await
        .unwrap();
    let url = cluster.nodes[4].url();
    let urls = cluster.urls();
    let (killed_tx, killed) = tokio::sync::oneshot::channel();
    let restart = tokio::task::spawn_blocking(move || {
        let mut cluster = cluster;
        cluster.partition(&[vec![4], vec![0, 1, 2, 3]]);
        cluster.kill(4);
        let _ = killed_tx.send(());
        cluster.begin_restart(4);
        std::thread::sleep(cut);
        cluster.heal_partition();
        cluster.finish_restart(4);
        cluster.wait_converged(Duration::from_secs(30));
        cluster
    });
    let mut answers = Vec::new();
    let mut acked = Vec::new();
    killed.await.unwrap();
    let mut conn = loop {
        if let Ok(c) = Conn::connect(&url, Duration::from_secs(1)).await {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for i in 0..60 {
        let key = format!("early{i}");
        let a = conn
            .request(
                json!({"op": "put", "key": key, "value": format!("v{i}")}),
                Duration::from_secs(30),
            )
            .await
            .unwrap();
        if a["ok"] == true {
            acked.push(key);
        }
        answers.push(a);
    }
    let cluster = restart.await.unwrap();
    for u in &urls {
        let r = kv_tests::ws_request_blocking(u, json!({"op": "repair"}));
        assert_eq!(r["ok"], true, "{r}");
    }
    let mut c = Conn::connect(&urls[0], Duration::from_secs(5))
        .await
        .unwrap();
    let mut lost = Vec::new();
    for key in acked {
        let r = c
            .request(
                json!({"op": "get", "key": key, "r": 3}),
                Duration::from_secs(20),
            )
            .await
            .unwrap();
        if r["found"] != true {
            lost.push(key);
        }
    }
    drop(cluster);
    (lost, answers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_serves_only_once_gossip_gave_it_the_ring() {
    // Cut off for 1 s: less than the node waits for its first gossip exchange.
    let (lost, answers) = writes_through_a_node_restarted_alone(Duration::from_secs(1)).await;
    let acked = answers.iter().filter(|a| a["ok"] == true).count();
    assert_eq!(
        acked,
        answers.len(),
        "{:?}",
        answers.iter().find(|a| a["ok"] != true)
    );
    assert!(
        lost.is_empty(),
        "{} of {acked} acknowledged writes lost: {lost:?}",
        lost.len()
    );
}

/// A node restarted while cut off from every peer for longer than it waits for gossip. It once
/// served with a ring of itself alone and acknowledged writes (default W capped at one) on keys
/// it does not replicate, lost once the partition healed. It now rebuilds the ring from the
/// members it remembers in its data dir (`members.json`): the key's other replicas are
/// unreachable, so such writes are refused or time out instead of being acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_alone_for_long_acknowledges_no_write_it_then_loses() {
    let (lost, answers) = writes_through_a_node_restarted_alone(Duration::from_secs(6)).await;
    let acked = answers.iter().filter(|a| a["ok"] == true).count();
    assert!(
        lost.is_empty(),
        "{} of {acked} acknowledged writes lost: {lost:?}",
        lost.len()
    );
}

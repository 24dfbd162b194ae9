//! `removenode`: a node that is gone for good (killed, never restarted) is taken out of the
//! ring from a live node while clients write. The nodes that gain its ranges stream them in
//! from the other replicas; hints kept for it go to the new owners; then every replica of
//! every acknowledged key holds it itself. The removed node, started again with its old data
//! dir, stays out of the ring.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kv_tests::{kvcli, spawn_writer, Cluster, ClusterOpts, Ws};
use serde_json::{json, Value};

fn ids_of(ring: &Value) -> Vec<String> {
    ring["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap().to_string())
        .collect()
}

async fn hints_for(ws: &mut Ws, target: &str) -> u64 {
    let h = ws.request(json!({"op": "hints"})).await;
    h["hints"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["target"] == target)
        .map(|x| x["count"].as_u64().unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_is_removed_its_ranges_refilled_and_it_stays_out() {
    let mut cluster = Cluster::start(5, ClusterOpts::default());
    let mut ws = Ws::connect(&cluster.nodes[0].url()).await;
    let mut keys: Vec<String> = Vec::new();
    for i in 0..600 {
        let key = format!("pre{i}");
        let r = ws
            .request(json!({"op": "put", "key": key, "value": key}))
            .await;
        assert_eq!(r["ok"], true, "{r}");
        keys.push(key);
    }

    // n5 dies for good. Writes go on: the stand-ins keep hints for it.
    cluster.kill(4);
    tokio::task::block_in_place(|| cluster.wait_state(0, 4, "down", Duration::from_secs(30)));
    for i in 0..300 {
        let key = format!("mid{i}");
        let r = ws
            .request(json!({"op": "put", "key": key, "value": key}))
            .await;
        assert_eq!(r["ok"], true, "{r}");
        keys.push(key);
    }
    let hinted = hints_for(&mut ws, "n5").await;
    assert!(hinted > 0, "writes while n5 was down left hints for it");

    // Refused: a node that is up, a node that does not exist.
    let r = ws.request(json!({"op": "removenode", "node": "n2"})).await;
    assert_eq!(r["ok"], false, "{r}");
    assert!(
        r["error"]["message"].as_str().unwrap().contains("is up"),
        "{r}"
    );
    let url = cluster.nodes[1].url();
    let (code, _, err) = kvcli(&["--node", &url, "--json", "removenode", "nobody"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not a node"), "{err}");

    // Writes go on during the removal, through another node.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_writer(
        cluster.nodes[0].url(),
        "during".into(),
        Duration::from_millis(5),
        stop.clone(),
    );
    let (code, out, err) =
        tokio::task::block_in_place(|| kvcli(&["--node", &url, "--json", "removenode", "n5"]));
    stop.store(true, Ordering::Relaxed);
    let during = writer.await.unwrap();
    assert!(
        !during.is_empty(),
        "writes were acknowledged during the removal"
    );
    keys.extend(during);
    assert_eq!(code, 0, "{err}\n{}", cluster.logs());
    let done: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(done["ok"], true, "{out}");
    assert_eq!(done["node"], "n5", "{out}");
    assert!(done["moved_keys"].as_u64().unwrap() > 0, "{out}");

    // Every live node: n5 is out of the ring and shown as left.
    for idx in 0..4 {
        let mut c = Ws::connect(&cluster.nodes[idx].url()).await;
        let ring = c.request(json!({"op": "ring"})).await;
        assert!(!ids_of(&ring).contains(&"n5".to_string()), "{ring}");
        let status = c.request(json!({"op": "status"})).await;
        let n5 = status["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["id"] == "n5")
            .cloned();
        assert_eq!(
            n5.map(|n| n["state"].clone()),
            Some(json!("left")),
            "{status}"
        );
    }

    // The hints kept for n5 are handed to the new owners and dropped.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = hints_for(&mut ws, "n5").await;
        if left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{left} of {hinted} hints for n5 still held"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Every replica of every key, on the ring without n5, holds it itself.
    let mut locals = Vec::new();
    for idx in 0..4 {
        locals.push(Ws::connect(&cluster.nodes[idx].url()).await);
    }
    for key in &keys {
        let pl = ws.request(json!({"op": "ring", "key": key})).await;
        for owner in pl["preference_list"].as_array().unwrap() {
            let owner = owner.as_str().unwrap();
            assert_ne!(owner, "n5");
            let idx: usize = owner[1..].parse::<usize>().unwrap() - 1;
            let r = locals[idx]
                .request(json!({"op": "get", "key": key, "local": true}))
                .await;
            assert_eq!(r["values"], json!([key]), "{owner} lacks {key}: {r}");
        }
    }

    println!(
        "{} acknowledged keys held by each of their replicas; {} keys streamed; {hinted} hints for n5 handed over",
        keys.len(),
        done["moved_keys"]
    );

    // n5 comes back with its old data dir: it learns it was removed and stays out.
    tokio::task::block_in_place(|| cluster.restart(4));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let log = std::fs::read_to_string(&cluster.nodes[4].log).unwrap();
    assert!(log.contains("was removed from the cluster"), "{log}");
    for idx in 0..5 {
        let mut c = Ws::connect(&cluster.nodes[idx].url()).await;
        let ring = c.request(json!({"op": "ring"})).await;
        assert!(
            !ids_of(&ring).contains(&"n5".to_string()),
            "{} has n5 back in its ring: {ring}",
            cluster.nodes[idx].id
        );
    }
    for key in &keys {
        let r = ws.request(json!({"op": "get", "key": key})).await;
        assert_eq!(r["values"], json!([key]), "{r}");
    }
}

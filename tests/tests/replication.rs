//! 5 nodes, N=3 W=2 R=2: many concurrent writes through every coordinator; every acknowledged
//! write reads back through every coordinator, and each key lives on exactly its N replicas.

use std::collections::BTreeMap;

use kv_tests::{Cluster, ClusterOpts, Ws};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_acknowledged_write_reads_back_through_every_coordinator() {
    let cluster = Cluster::start(5, ClusterOpts::default());
    let urls: Vec<String> = cluster.nodes.iter().map(|n| n.url()).collect();
    const CLIENTS: usize = 10;
    const PER_CLIENT: usize = 1000;

    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let url = urls[c % urls.len()].clone();
        tasks.push(tokio::spawn(async move {
            let mut ws = Ws::connect(&url).await;
            let mut acked = Vec::new();
            for i in 0..PER_CLIENT {
                let key = format!("k-{c}-{i}");
                let value = format!("v-{c}-{i}");
                let r = ws
                    .request(json!({"op": "put", "key": key, "value": value}))
                    .await;
                if r["ok"] == true {
                    acked.push((key, value));
                }
            }
            acked
        }));
    }
    let mut acked = BTreeMap::new();
    for t in tasks {
        for (k, v) in t.await.unwrap() {
            acked.insert(k, v);
        }
    }
    assert_eq!(
        acked.len(),
        CLIENTS * PER_CLIENT,
        "every write on a healthy cluster is acknowledged"
    );

    let acked: Vec<(String, String)> = acked.into_iter().collect();
    let mut readers = Vec::new();
    for url in &urls {
        for part in acked.chunks(acked.len() / 2 + 1) {
            let (url, part) = (url.clone(), part.to_vec());
            readers.push(tokio::spawn(async move {
                let mut ws = Ws::connect(&url).await;
                for (k, v) in &part {
                    let r = ws.request(json!({"op": "get", "key": k})).await;
                    assert_eq!(r["ok"], true, "{r}");
                    assert_eq!(r["values"], json!([v]), "key {k} through {url}: {r}");
                }
            }));
        }
    }
    for r in readers {
        r.await.unwrap();
    }

    // Each key is on exactly the nodes of its preference list.
    let mut ws = Ws::connect(&urls[0]).await;
    for (k, v) in acked.iter().take(50) {
        let pl = ws.request(json!({"op": "ring", "key": k})).await;
        let prefs: Vec<String> = serde_json::from_value(pl["preference_list"].clone()).unwrap();
        assert_eq!(prefs.len(), 3);
        for node in &cluster.nodes {
            let mut local = Ws::connect(&node.url()).await;
            let r = local
                .request(json!({"op": "get", "key": k, "local": true}))
                .await;
            let holds = r["values"] == json!([v]);
            assert_eq!(
                holds,
                prefs.contains(&node.id),
                "key {k} on {}: {r}",
                node.id
            );
        }
    }

    // The replicas' side of that work, in /metrics. Each put reaches its two replicas other
    // than the minter by replicate requests, at most one of them the coordinator itself; each
    // get asks its three replicas, at most one of them local; a coordinator outside a key's
    // preference list (2 of 5 nodes) asks a replica to mint.
    let served = |kind: &str| -> u64 {
        let line = format!("kv_peer_served_total{{kind=\"{kind}\"}} ");
        cluster
            .nodes
            .iter()
            .map(|n| {
                let metrics = kv_tests::http_get(&n.addr, "/metrics").expect("metrics");
                metrics
                    .lines()
                    .find_map(|l| l.strip_prefix(line.as_str()))
                    .unwrap_or_else(|| panic!("no {line}in /metrics of {}", n.id))
                    .parse::<u64>()
                    .unwrap()
            })
            .sum()
    };
    let writes = (CLIENTS * PER_CLIENT) as u64;
    let gets = writes * urls.len() as u64;
    let (mint, replicate, read) = (served("mint"), served("replicate"), served("read"));
    assert!(replicate >= writes, "replicate {replicate} < {writes} puts");
    assert!(read >= 2 * gets, "read {read} < two per get ({gets} gets)");
    assert!(
        mint > 0 && mint < writes,
        "mint {mint}: only for coordinators outside the preference list"
    );
}

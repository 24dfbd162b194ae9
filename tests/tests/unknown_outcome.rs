//! A write whose minting replica took the request and died before answering has an unknown
//! outcome: the client is told `timeout` ("it may have been applied"), and the write is not
//! minted a second time on the next replica (which would store it as two concurrent siblings).

use std::time::Duration;

use kv_tests::{Cluster, ClusterOpts, Ws};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minter_lost_with_the_request_in_hand_is_not_replaced() {
    let mut cluster = Cluster::start(
        3,
        ClusterOpts {
            n: 2,
            w: 1,
            r: 1,
            ..ClusterOpts::default()
        },
    );
    let mut ws = Ws::connect(&cluster.nodes[0].url()).await;
    // Two keys that n1 (the coordinator) does not replicate, minted by the same node.
    let mut keys: Vec<(String, Vec<String>)> = Vec::new();
    for i in 0..1000 {
        let key = format!("u{i}");
        let pl = ws.request(json!({"op": "ring", "key": key})).await;
        let prefs: Vec<String> = serde_json::from_value(pl["preference_list"].clone()).unwrap();
        if prefs.iter().any(|p| p == "n1") {
            continue;
        }
        if keys.first().is_none_or(|(_, first)| first[0] == prefs[0]) {
            keys.push((key, prefs));
        }
        if keys.len() == 2 {
            break;
        }
    }
    assert_eq!(keys.len(), 2, "keys minted by one node other than n1");
    let (warm, prefs) = keys[0].clone();
    let (key, _) = keys[1].clone();
    let minter = cluster.nodes.iter().position(|n| n.id == prefs[0]).unwrap();
    let other = cluster.nodes.iter().position(|n| n.id == prefs[1]).unwrap();

    // A first write opens n1's connection to the minter, so the next one is sent on it.
    let r = ws
        .request(json!({"op": "put", "key": warm, "value": "w", "w": 1}))
        .await;
    assert_eq!(r["ok"], true, "{r}");

    // The minter hangs; the write reaches its socket; then it dies without running again.
    cluster.pause(minter);
    let url = cluster.nodes[0].url();
    let put = {
        let key = key.clone();
        tokio::spawn(async move {
            let mut ws = Ws::connect(&url).await;
            ws.request(json!({"op": "put", "key": key, "value": "v", "w": 1}))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = cluster.nodes[minter].pid().expect("the minter runs");
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    cluster.kill(minter);

    let r = put.await.unwrap();
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(r["error"]["code"], "timeout", "{r}");
    let message = r["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("may have been applied") && message.contains(&prefs[0]),
        "{r}"
    );
    // The other replica did not mint it again.
    let mut local = Ws::connect(&cluster.nodes[other].url()).await;
    let r = local
        .request(json!({"op": "get", "key": key, "local": true}))
        .await;
    assert_eq!(
        (&r["found"], &r["values"]),
        (&json!(false), &json!([])),
        "{r}"
    );
}

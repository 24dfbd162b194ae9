//! Quorums that cannot be met: with 2 of a key's 3 replicas down, a strict W=2 write fails
//! with `unavailable` naming them, and a sloppy write of the same key succeeds through
//! stand-ins; with a replica down and nobody to stand in for it, W=3 and R=3 are refused at
//! once, naming it, and nothing is written.

use std::time::Duration;

use kv_tests::{Cluster, ClusterOpts, Ws};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_cannot_meet_its_quorum_is_unavailable_and_names_the_replicas() {
    let mut cluster = Cluster::start(4, ClusterOpts::default());
    let mut ws = Ws::connect(&cluster.nodes[0].url()).await;
    // A key whose preference list does not include n1 (the coordinator we keep).
    let mut chosen = None;
    for i in 0..1000 {
        let key = format!("q{i}");
        let pl = ws.request(json!({"op": "ring", "key": key})).await;
        let prefs: Vec<String> = serde_json::from_value(pl["preference_list"].clone()).unwrap();
        if !prefs.contains(&"n1".to_string()) {
            chosen = Some((key, prefs));
            break;
        }
    }
    let (key, prefs) = chosen.expect("some key avoids n1");
    let idx = |c: &Cluster, id: &str| c.nodes.iter().position(|n| n.id == id).unwrap();
    let (down_a, down_b) = (prefs[1].clone(), prefs[2].clone());
    let (ia, ib) = (idx(&cluster, &down_a), idx(&cluster, &down_b));
    cluster.kill(ia);
    cluster.kill(ib);
    cluster.wait_state(0, ia, "down", Duration::from_secs(20));
    cluster.wait_state(0, ib, "down", Duration::from_secs(20));

    let r = ws
        .request(json!({"op": "put", "key": key, "value": "v", "w": 2, "sloppy": false}))
        .await;
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(r["error"]["code"], "unavailable", "{r}");
    let msg = r["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains(&down_a) && msg.contains(&down_b),
        "names both failed replicas: {msg}"
    );

    // W=1 is still met by the live replica; reads at R=1 see it. (The refused write may
    // have reached the live replica: `unavailable` means "not confirmed at W", as in Dynamo,
    // so it can show up as a sibling.)
    let r = ws
        .request(json!({"op": "put", "key": key, "value": "v2", "w": 1, "sloppy": false}))
        .await;
    assert_eq!(r["ok"], true, "{r}");
    let r = ws
        .request(json!({"op": "get", "key": key, "r": 1, "sloppy": false}))
        .await;
    assert!(
        r["values"].as_array().unwrap().contains(&json!("v2")),
        "{r}"
    );
    let r = ws
        .request(json!({"op": "get", "key": key, "r": 2, "sloppy": false}))
        .await;
    assert_eq!(r["error"]["code"], "unavailable", "{r}");

    // A delete without a context reads first, at the default R=2: not met, and it says why.
    // With the context of the R=1 read it is a W=1 write like the put.
    let d = ws
        .request(json!({"op": "delete", "key": key, "w": 1, "sloppy": false}))
        .await;
    assert_eq!(d["error"]["code"], "unavailable", "{d}");
    let msg = d["error"]["message"].as_str().unwrap();
    assert!(msg.contains("reads the key first"), "{msg}");
    let read = ws
        .request(json!({"op": "get", "key": key, "r": 1, "sloppy": false}))
        .await;
    let d = ws
        .request(json!({"op": "delete", "key": key, "w": 1, "sloppy": false, "context": read["context"]}))
        .await;
    assert_eq!(d["ok"], true, "{d}");
    let r = ws
        .request(json!({"op": "get", "key": key, "r": 1, "sloppy": false}))
        .await;
    assert_eq!(r["found"], false, "{r}");

    // The same write under a sloppy quorum: stand-ins keep hints for the two down replicas.
    let r = ws
        .request(json!({"op": "put", "key": key, "value": "v3", "w": 2}))
        .await;
    assert_eq!(r["ok"], true, "sloppy W=2 is met by a stand-in: {r}");
    let hints = ws.request(json!({"op": "hints"})).await;
    let pending: u64 = hints["hints"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["target"] == down_a.as_str() || h["target"] == down_b.as_str())
        .map(|h| h["count"].as_u64().unwrap())
        .sum();
    assert!(
        pending >= 1,
        "hints are held for the down replicas: {hints}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_known_to_be_impossible_is_refused_up_front_and_writes_nothing() {
    // Three nodes, three replicas per key: a down node has no one to stand in for it.
    let mut cluster = Cluster::start(3, ClusterOpts::default());
    let mut ws = Ws::connect(&cluster.nodes[0].url()).await;
    cluster.kill(2);
    cluster.wait_state(0, 2, "down", Duration::from_secs(20));
    let down = cluster.nodes[2].id.clone();

    for sloppy in [true, false] {
        let key = format!("impossible-{sloppy}");
        let r = ws
            .request(json!({"op": "put", "key": key, "value": "v", "w": 3, "sloppy": sloppy}))
            .await;
        assert_eq!(r["error"]["code"], "unavailable", "{r}");
        let msg = r["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains("W=3 needed, 2 of the key's") && msg.contains(&format!("{down}: down")),
            "says how many are up and names the down replica: {msg}"
        );
        if sloppy {
            assert!(msg.contains("no other node is up to stand in"), "{msg}");
        }
        // Refused before anything was sent: the live replicas never saw the write.
        let r = ws
            .request(json!({"op": "get", "key": key, "r": 2, "sloppy": sloppy}))
            .await;
        assert_eq!(
            (r["ok"].clone(), r["found"].clone()),
            (json!(true), json!(false)),
            "{r}"
        );

        let r = ws
            .request(json!({"op": "get", "key": key, "r": 3, "sloppy": sloppy}))
            .await;
        assert_eq!(r["error"]["code"], "unavailable", "{r}");
        let msg = r["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains("R=3 needed, 2 of the key's") && msg.contains(&down),
            "{msg}"
        );
    }
    // What can be met still is.
    let r = ws
        .request(json!({"op": "put", "key": "possible", "value": "v", "w": 2}))
        .await;
    assert_eq!(r["ok"], true, "{r}");
}

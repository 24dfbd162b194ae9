//! Concurrent writes are never silently dropped: writes from the same context, through the
//! same or different coordinators, and blind writes, all become siblings; a write with the
//! merged context resolves them.

use kv_tests::{Cluster, ClusterOpts, Ws};
use serde_json::{json, Value};

fn sorted_values(r: &Value) -> Vec<String> {
    let mut v: Vec<String> = r["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_become_siblings_and_a_merged_write_resolves_them() {
    let cluster = Cluster::start(3, ClusterOpts::default());
    let mut a = Ws::connect(&cluster.nodes[0].url()).await;
    let mut b = Ws::connect(&cluster.nodes[1].url()).await;

    // A common ancestor, read by two clients.
    assert_eq!(
        a.request(json!({"op": "put", "key": "cart", "value": "base"}))
            .await["ok"],
        true
    );
    let read = a.request(json!({"op": "get", "key": "cart"})).await;
    let ctx = read["context"].as_str().unwrap().to_string();

    // Same context, same coordinator: both survive.
    a.request(json!({"op": "put", "key": "cart", "value": "x", "context": ctx}))
        .await;
    a.request(json!({"op": "put", "key": "cart", "value": "y", "context": ctx}))
        .await;
    let r = a.request(json!({"op": "get", "key": "cart"})).await;
    assert_eq!(sorted_values(&r), ["x", "y"], "{r}");

    // Same context through a different coordinator: a third sibling; base stays overwritten.
    b.request(json!({"op": "put", "key": "cart", "value": "z", "context": ctx}))
        .await;
    let r = b.request(json!({"op": "get", "key": "cart", "r": 3})).await;
    assert_eq!(sorted_values(&r), ["x", "y", "z"], "{r}");

    // Resolve with the merged context: one value remains, through every coordinator.
    let merged_ctx = r["context"].as_str().unwrap().to_string();
    let w = b
        .request(json!({"op": "put", "key": "cart", "value": "xyz", "context": merged_ctx}))
        .await;
    assert_eq!(w["ok"], true, "{w}");
    for node in &cluster.nodes {
        let mut c = Ws::connect(&node.url()).await;
        let r = c.request(json!({"op": "get", "key": "cart", "r": 3})).await;
        assert_eq!(sorted_values(&r), ["xyz"], "through {}: {r}", node.id);
    }

    // Blind writes (no context) are concurrent with what is stored.
    a.request(json!({"op": "put", "key": "blind", "value": "one"}))
        .await;
    b.request(json!({"op": "put", "key": "blind", "value": "two"}))
        .await;
    let r = a
        .request(json!({"op": "get", "key": "blind", "r": 3}))
        .await;
    assert_eq!(sorted_values(&r), ["one", "two"], "{r}");

    // A delete with the read context removes every sibling it saw.
    let ctx = r["context"].as_str().unwrap().to_string();
    let d = a
        .request(json!({"op": "delete", "key": "blind", "context": ctx}))
        .await;
    assert_eq!(d["ok"], true, "{d}");
    let r = b
        .request(json!({"op": "get", "key": "blind", "r": 3}))
        .await;
    assert_eq!(r["found"], false, "{r}");
    assert_eq!(r["values"], json!([]), "{r}");

    // A delete without a context deletes what a quorum read finds: every sibling, written
    // through any coordinator (a tombstone concurrent with them would delete nothing).
    a.request(json!({"op": "put", "key": "gone", "value": "one"}))
        .await;
    b.request(json!({"op": "put", "key": "gone", "value": "two"}))
        .await;
    let d = b.request(json!({"op": "delete", "key": "gone"})).await;
    assert_eq!(d["ok"], true, "{d}");
    for node in &cluster.nodes {
        let mut c = Ws::connect(&node.url()).await;
        let r = c.request(json!({"op": "get", "key": "gone", "r": 3})).await;
        assert_eq!(r["found"], false, "through {}: {r}", node.id);
    }
    // A write after it is a new value, and a delete of a key nobody wrote is harmless.
    a.request(json!({"op": "put", "key": "gone", "value": "three"}))
        .await;
    let r = b.request(json!({"op": "get", "key": "gone", "r": 3})).await;
    assert_eq!(sorted_values(&r), ["three"], "{r}");
    let d = a
        .request(json!({"op": "delete", "key": "never-written"}))
        .await;
    assert_eq!(d["ok"], true, "{d}");
    let r = a
        .request(json!({"op": "get", "key": "never-written"}))
        .await;
    assert_eq!(r["found"], false, "{r}");

    // An empty context is a context: that of a read that found nothing. A delete with it
    // deletes nothing written after that read.
    let read = a.request(json!({"op": "get", "key": "late"})).await;
    assert_eq!(read["context"], "", "{read}");
    b.request(json!({"op": "put", "key": "late", "value": "written after the read"}))
        .await;
    let d = a
        .request(json!({"op": "delete", "key": "late", "context": read["context"]}))
        .await;
    assert_eq!(d["ok"], true, "{d}");
    let r = b.request(json!({"op": "get", "key": "late", "r": 3})).await;
    assert_eq!(sorted_values(&r), ["written after the read"], "{r}");
}

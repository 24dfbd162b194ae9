//! A client may send requests without waiting for answers: every request gets exactly one
//! answer, carrying its id, in whatever order they complete.

use kv_tests::{Cluster, ClusterOpts, Ws};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_each_get_one_answer_with_their_id() {
    let cluster = Cluster::start(1, ClusterOpts::one_replica());
    let mut ws = Ws::connect(&cluster.nodes[0].url()).await;

    // 300 writes of distinct keys, sent before any answer is read.
    let puts: Vec<String> = (1..=300u64)
        .map(|i| json!({"id": i, "op": "put", "key": format!("p{i}"), "value": format!("v{i}")}))
        .map(|v| v.to_string())
        .collect();
    let answers = ws.pipeline(&puts).await;
    assert_eq!(
        answers.keys().copied().collect::<Vec<_>>(),
        (1..=300).collect::<Vec<_>>()
    );
    for (id, a) in &answers {
        assert_eq!(a["ok"], true, "put {id}: {a}");
        assert_eq!(a["key"], format!("p{id}"), "{a}");
    }

    // Reads of them, with a bad frame and an unknown op in the middle: those get their error
    // answers, and every read finds its own value.
    let mut frames: Vec<String> = (1001..=1300u64)
        .map(|i| json!({"id": i, "op": "get", "key": format!("p{}", i - 1000)}).to_string())
        .collect();
    frames.insert(150, r#"{"id": 2000, "op": "frobnicate"}"#.to_string());
    frames.insert(40, r#"{"id": 2001, "op": "get", "key": 7}"#.to_string());
    let answers = ws.pipeline(&frames).await;
    assert_eq!(answers.len(), 302);
    for i in 1001..=1300u64 {
        let a = &answers[&i];
        assert_eq!(a["ok"], true, "get {i}: {a}");
        assert_eq!(
            a["values"],
            json!([format!("v{}", i - 1000)]),
            "get {i}: {a}"
        );
    }
    for id in [2000, 2001] {
        assert_eq!(
            answers[&id]["error"]["code"], "bad_request",
            "{}",
            answers[&id]
        );
    }

    // The connection serves one request at a time as before.
    let answers = ws
        .pipeline(&[json!({"id": 7, "op": "ping"}).to_string()])
        .await;
    assert_eq!(answers[&7]["ok"], true, "{}", answers[&7]);
}

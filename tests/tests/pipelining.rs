//! A client may send requests without waiting for answers: every request gets exactly one
//! answer, carrying its id, in whatever order they complete.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use kv_tests::{Cluster, ClusterOpts};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Sends every frame at once, then reads as many answers, by id.
async fn pipeline(ws: &mut Socket, frames: &[String]) -> BTreeMap<u64, Value> {
    for f in frames {
        ws.feed(Message::text(f.clone()))
            .await
            .expect("queue a frame");
    }
    ws.flush().await.expect("send the frames");
    let mut answers = BTreeMap::new();
    while answers.len() < frames.len() {
        let msg = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("answers within 20 s")
            .expect("the connection is open")
            .expect("a readable frame");
        if let Message::Text(t) = msg {
            let v: Value = serde_json::from_str(&t).expect("answers are JSON");
            let id = v["id"].as_u64().unwrap_or(0);
            assert!(answers.insert(id, v).is_none(), "two answers for id {id}");
        }
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_each_get_one_answer_with_their_id() {
    let cluster = Cluster::start(1, ClusterOpts::one_replica());
    let (mut ws, _) = tokio_tungstenite::connect_async(cluster.nodes[0].url())
        .await
        .expect("connect");

    // 300 writes of distinct keys, sent before any answer is read.
    let puts: Vec<String> = (1..=300u64)
        .map(|i| json!({"id": i, "op": "put", "key": format!("p{i}"), "value": format!("v{i}")}))
        .map(|v| v.to_string())
        .collect();
    let answers = pipeline(&mut ws, &puts).await;
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
    let answers = pipeline(&mut ws, &frames).await;
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
    let answers = pipeline(&mut ws, &[json!({"id": 7, "op": "ping"}).to_string()]).await;
    assert_eq!(answers[&7]["ok"], true, "{}", answers[&7]);
}

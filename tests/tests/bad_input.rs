//! Malformed frames, unknown ops, oversized keys and values, wrong types: error answers, and
//! the connection and the node live on.

use kv_tests::{Cluster, ClusterOpts, Ws};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_get_error_answers_and_the_connection_lives_on() {
    let cluster = Cluster::start(1, ClusterOpts::one_replica());
    let mut ws = Ws::connect(&cluster.nodes[0].url()).await;

    let r = ws.send_raw("this is not json").await;
    assert_eq!(
        (r["ok"].clone(), r["error"]["code"].clone()),
        (json!(false), json!("bad_request")),
        "{r}"
    );
    let r = ws.send_raw(r#"{"id": 5, "op": "frobnicate"}"#).await;
    assert_eq!(r["id"], 5);
    assert_eq!(r["error"]["code"], "bad_request");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown op"),
        "{r}"
    );
    let r = ws.send_raw(r#"{"id": 6, "op": "get", "key": 42}"#).await;
    assert_eq!(
        (r["id"].clone(), r["error"]["code"].clone()),
        (json!(6), json!("bad_request")),
        "{r}"
    );
    let r = ws.send_raw(r#"{"id": 7, "op": "put", "key": "k"}"#).await;
    assert_eq!(r["error"]["code"], "bad_request", "{r}");
    let r = ws
        .send_raw(r#"{"id": 8, "op": "put", "key": "k", "value": "v", "context": "@@garbage@@"}"#)
        .await;
    assert_eq!(r["error"]["code"], "bad_request", "{r}");
    let r = ws.send_message(Message::binary(vec![1u8, 2, 3])).await;
    assert_eq!(r["error"]["code"], "bad_request", "{r}");

    let big_key = "k".repeat(1025);
    let r = ws
        .request(json!({"op": "put", "key": big_key, "value": "v"}))
        .await;
    assert_eq!(r["error"]["code"], "too_large", "{r}");
    let big_value = "v".repeat(1024 * 1024 + 1);
    let r = ws
        .request(json!({"op": "put", "key": "k", "value": big_value}))
        .await;
    assert_eq!(r["error"]["code"], "too_large", "{r}");
    let frame = format!(
        r#"{{"id": 9, "op": "put", "key": "k", "value": "{}"}}"#,
        "x".repeat(3 * 1024 * 1024)
    );
    let r = ws.send_raw(&frame).await;
    assert_eq!(r["error"]["code"], "too_large", "{r}");
    let r = ws
        .request(json!({"op": "put", "key": "k", "value": "v", "w": 5}))
        .await;
    assert_eq!(r["error"]["code"], "bad_request", "W above N: {r}");

    // The same connection still works, and a value at the limit is accepted.
    let max_value = "m".repeat(1024 * 1024);
    let r = ws
        .request(json!({"op": "put", "key": "big", "value": max_value}))
        .await;
    assert_eq!(r["ok"], true, "{}", r["error"]);
    let r = ws.request(json!({"op": "get", "key": "big"})).await;
    assert_eq!(r["values"][0].as_str().unwrap().len(), 1024 * 1024);
    let r = ws.request(json!({"op": "get", "key": "absent"})).await;
    assert_eq!(
        (r["ok"].clone(), r["found"].clone()),
        (json!(true), json!(false)),
        "{r}"
    );

    // Plain HTTP on the same port.
    let (status, body) = kv_tests::http_get_full(&cluster.nodes[0].addr, "/health").unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("\"status\":\"ok\""), "{body}");
    let (status, _) = kv_tests::http_get_full(&cluster.nodes[0].addr, "/nope").unwrap();
    assert_eq!(status, 404);
    let metrics = kv_tests::http_get(&cluster.nodes[0].addr, "/metrics").unwrap();
    assert!(
        metrics.contains("kv_requests_total{op=\"put\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("kv_bad_frames_total"), "{metrics}");
}

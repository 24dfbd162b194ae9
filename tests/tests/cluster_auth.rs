//! Peer authentication with `--cluster-secret-file`: nodes that share the secret form a cluster;
//! a peer connection that cannot prove it is closed before it can gossip, read or write, and a
//! node with another secret cannot join.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use kv_tests::{free_port, kvd_bin, Cluster, ClusterOpts, Ws};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_peers_that_know_the_secret_get_in() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "correct horse battery staple\n").unwrap();
    let mut extra = ClusterOpts::default().extra;
    extra.extend([
        "--cluster-secret-file".to_string(),
        secret.display().to_string(),
    ]);
    let cluster = Cluster::start(
        3,
        ClusterOpts {
            extra,
            ..ClusterOpts::default()
        },
    );

    // The cluster works: replication between authenticated peers.
    let mut ws = Ws::connect(&cluster.nodes[0].url()).await;
    assert_eq!(
        ws.request(json!({"op": "put", "key": "k", "value": "v", "w": 3}))
            .await["ok"],
        true
    );
    let mut other = Ws::connect(&cluster.nodes[2].url()).await;
    assert_eq!(
        other
            .request(json!({"op": "get", "key": "k", "r": 3}))
            .await["values"],
        json!(["v"])
    );

    // A raw peer connection that skips the proof gets a challenge, then nothing but a close.
    let url = format!("ws://{}/peer", cluster.nodes[0].addr);
    let (mut peer, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    let first = peer.next().await.unwrap().unwrap();
    let challenge: Value = serde_json::from_str(first.to_text().unwrap()).unwrap();
    assert!(challenge["challenge"].is_string(), "{challenge}");
    let gossip = json!({"id": 1, "body": {"t": "read", "key": "k"}});
    peer.send(Message::text(gossip.to_string())).await.unwrap();
    let mut learned = Vec::new();
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(5), peer.next()).await {
        if let Message::Text(t) = m {
            learned.push(t.to_string());
        }
    }
    assert!(
        learned.is_empty(),
        "an unauthenticated peer learned {learned:?}"
    );

    // A forged proof is refused the same way.
    let (mut peer, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    let _ = peer.next().await;
    let forged = json!({"proof": "00".repeat(32), "challenge": "11".repeat(16)});
    peer.send(Message::text(forged.to_string())).await.unwrap();
    let mut learned = Vec::new();
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(5), peer.next()).await {
        if let Message::Text(t) = m {
            learned.push(t.to_string());
        }
    }
    assert!(
        learned.is_empty(),
        "a forged proof got answers: {learned:?}"
    );

    // A node with another secret cannot join: it gives up with a clear error.
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "a different secret entirely\n").unwrap();
    let data = dir.path().join("intruder");
    let started = Instant::now();
    let out = Command::new(kvd_bin())
        .args([
            "--id",
            "intruder",
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
        ])
        .arg("--data-dir")
        .arg(&data)
        .args(["--seed", &cluster.nodes[0].addr, "--cluster-secret-file"])
        .arg(&wrong)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success(), "the intruder started");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot join") && err.contains("refused"),
        "{err}"
    );
    println!("intruder: {}", err.trim());
    println!(
        "intruder refused after {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let status = ws.request(json!({"op": "status"})).await;
    assert!(
        !status["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["id"] == "intruder"),
        "the intruder is not a member: {status}"
    );

    // A node with no secret at all is told so at once (it used to retry its seed for 30 s
    // and end with "connection lost").
    let out = Command::new(kvd_bin())
        .args([
            "--id",
            "stranger",
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
        ])
        .arg("--data-dir")
        .arg(dir.path().join("stranger"))
        .args(["--seed", &cluster.nodes[0].addr])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success(), "the stranger started");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot join") && err.contains("--cluster-secret-file"),
        "{err}"
    );
}

#[test]
fn client_tokens_are_checked_and_read_only_ones_cannot_write() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(
        &tokens,
        "# operators\nwrite-token-123 rw\nread-token-456 ro\n",
    )
    .unwrap();
    let mut extra = ClusterOpts::default().extra;
    extra.extend(["--token-file".to_string(), tokens.display().to_string()]);
    let cluster = Cluster::start(
        1,
        ClusterOpts {
            n: 1,
            w: 1,
            r: 1,
            extra,
            ..ClusterOpts::default()
        },
    );
    let node = cluster.nodes[0].url();
    let kv = |args: &[&str]| {
        let mut all = vec!["--node", node.as_str()];
        all.extend_from_slice(args);
        kv_tests::kvcli(&all)
    };

    // One line naming the node, and saying whether a token was given.
    let (code, _, err) = kv(&["get", "k"]);
    assert_eq!(code, 3, "no token: {err}");
    assert_eq!(
        err.trim(),
        format!("kvcli: unauthorized: {node} requires a token (HTTP 401 Unauthorized); give --token or KV_TOKEN")
    );
    let (code, _, err) = kv(&["--token", "guess", "get", "k"]);
    assert_eq!(code, 3, "a wrong token: {err}");
    assert_eq!(
        err.trim(),
        format!("kvcli: unauthorized: {node} refused the token (HTTP 401 Unauthorized)")
    );

    let (code, _, err) = kv(&["--token", "write-token-123", "put", "k", "v"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = kv(&["--token", "read-token-456", "get", "k"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("v\n"), "{out}");
    let (code, _, err) = kv(&["--token", "read-token-456", "put", "k", "w"]);
    assert_eq!(code, 3, "a read-only token cannot write: {err}");
    assert!(err.contains("read-only"), "{err}");
    let (code, _, err) = kv(&["--token", "read-token-456", "delete", "k"]);
    assert_eq!(code, 3, "{err}");
    let (code, out, _) = kv(&["--token", "write-token-123", "get", "k"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("v\n"), "nothing changed: {out}");
}

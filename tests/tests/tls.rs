//! TLS with `--tls-cert/--tls-key/--tls-ca`: a cluster whose nodes gossip, replicate and
//! serve clients over `wss://` and `https://`, and refuses plain clients, clients that do not
//! trust its CA, and nodes whose certificates another CA signed; none of them learns anything.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use kv_tests::{free_port, kvcli, kvd_bin, Cluster, ClusterOpts, TlsFiles, Ws};
use serde_json::json;

/// Bytes a plaintext HTTP request to `addr` gets back before the node closes.
fn plaintext_answer(addr: &str) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    buf
}

/// Starts a node that tries to join through `seed` with `flags`; returns its exit status and
/// standard error (it must give up by itself: a refusal is final).
fn try_to_join(seed: &str, data: &std::path::Path, flags: &[String]) -> (bool, String) {
    let mut child = Command::new(kvd_bin())
        .args(["--id", "intruder", "--listen"])
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--data-dir")
        .arg(data)
        .args(["--seed", seed])
        .args(flags)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("a node refused by the cluster did not give up within 20 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status.success(), err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_serves_only_those_who_trust_it() {
    let dir = tempfile::tempdir().unwrap();
    let tls = TlsFiles::generate(&dir.path().join("certs"), "cluster");
    let other = TlsFiles::generate(&dir.path().join("certs"), "other");
    // Converging proves gossip over wss://: the harness checks /health over https://.
    let cluster = Cluster::start(
        3,
        ClusterOpts {
            tls: Some(tls.clone()),
            ..ClusterOpts::default()
        },
    );
    let first = &cluster.nodes[0];
    assert!(first.url().starts_with("wss://"));

    // Replication between TLS peers: W=3, then R=3 from another node.
    let mut ws = Ws::connect_ca(&first.url(), Some(&tls.ca)).await;
    let put = ws
        .request(json!({"op": "put", "key": "k", "value": "secret value", "w": 3}))
        .await;
    assert_eq!(put["ok"], true, "{put}");
    let mut third = Ws::connect_ca(&cluster.nodes[2].url(), Some(&tls.ca)).await;
    let got = third
        .request(json!({"op": "get", "key": "k", "r": 3}))
        .await;
    assert_eq!(got["values"], json!(["secret value"]), "{got}");

    // kvcli over wss:// with --ca-file, for the protocol and for HTTP (metrics).
    let ca = tls.ca.display().to_string();
    let url = first.url();
    let (code, out, err) = kvcli(&["--node", &url, "--ca-file", &ca, "get", "k"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("secret value\n"), "{out}");
    let (code, out, err) = kvcli(&["--node", &url, "--ca-file", &ca, "metrics"]);
    assert_eq!(code, 0, "kvcli metrics over https: {err}");
    assert!(!out.is_empty());
    // The load generator frames its own messages over the TLS stream.
    let (code, out, err) = kvcli(&[
        "--node",
        &url,
        "--ca-file",
        &ca,
        "--json",
        "bench",
        "--workload",
        "a",
        "--clients",
        "4",
        "--ops",
        "400",
        "--records",
        "50",
        "--value-size",
        "3000",
    ]);
    assert_eq!(code, 0, "kvcli bench over wss: {err}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("a JSON report");
    assert_eq!(report["errors"], 0, "{out}");
    assert_eq!(report["ops"], 400, "{out}");

    // A plain WebSocket client is refused, and told why it might be.
    let plain = format!("ws://{}", first.addr);
    let (code, out, err) = kvcli(&["--node", &plain, "get", "k"]);
    assert_eq!(code, 3, "{out}{err}");
    assert!(err.contains("wss://"), "{err}");
    assert!(!out.contains("secret"), "{out}");

    // A client that trusts another CA refuses the node's certificate before sending anything.
    let wrong_ca = other.ca.display().to_string();
    let (code, out, err) = kvcli(&["--node", &url, "--ca-file", &wrong_ca, "get", "k"]);
    assert_eq!(code, 3, "{out}{err}");
    assert!(err.contains("certificate"), "{err}");
    assert!(!out.contains("secret"), "{out}");

    // Plaintext HTTP learns nothing: no HTTP answer, no JSON, at most a TLS alert record.
    let answer = plaintext_answer(&first.addr);
    let text = String::from_utf8_lossy(&answer);
    assert!(
        !text.contains("HTTP/") && !text.contains("ring_nodes") && !text.contains('{'),
        "a plaintext request got {answer:?}"
    );
    assert!(
        answer.is_empty() || answer[0] == 0x15,
        "only an alert record may come back: {answer:?}"
    );

    // A node without TLS cannot join, nor can one whose certificate another CA signed.
    let (ok, err) = try_to_join(&first.addr, &dir.path().join("plain"), &[]);
    assert!(!ok, "a plain node joined a TLS cluster");
    assert!(err.contains("cannot join") && err.contains("TLS"), "{err}");
    println!("plain node: {}", err.trim());
    let (ok, err) = try_to_join(&first.addr, &dir.path().join("forged"), &other.flags());
    assert!(!ok, "a node with another CA's certificate joined");
    assert!(
        err.contains("cannot join") && err.contains("certificate"),
        "{err}"
    );
    println!("other CA: {}", err.trim());
    let status = ws.request(json!({"op": "status"})).await;
    let nodes = status["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3, "no intruder is a member: {status}");
    assert!(nodes.iter().all(|n| n["id"] != "intruder"), "{status}");

    // The refusals are counted.
    let metrics = first.get("/metrics").expect("metrics over https");
    let failed: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("kv_tls_handshakes_failed_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the handshake failure counter");
    assert!(failed >= 3, "refused handshakes counted: {failed}");
}

#[test]
fn tls_settings_come_complete_and_readable() {
    let dir = tempfile::tempdir().unwrap();
    let tls = TlsFiles::generate(&dir.path().join("certs"), "cfg");
    let run = |flags: &[&str]| {
        let out = Command::new(kvd_bin())
            .args(["--listen", &format!("127.0.0.1:{}", free_port())])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(flags)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let cert = tls.cert.display().to_string();
    let key = tls.key.display().to_string();
    let ca = tls.ca.display().to_string();
    let (ok, err) = run(&["--tls-cert", &cert]);
    assert!(!ok);
    assert!(err.contains("--tls-cert, --tls-key and --tls-ca"), "{err}");
    let (ok, err) = run(&["--tls-require-client-cert"]);
    assert!(!ok);
    assert!(err.contains("--tls-require-client-cert needs TLS"), "{err}");
    let missing = dir.path().join("missing.pem").display().to_string();
    let (ok, err) = run(&["--tls-cert", &missing, "--tls-key", &key, "--tls-ca", &ca]);
    assert!(!ok);
    assert!(err.contains("missing.pem"), "{err}");
    // A file that holds no key, and a key that is not the certificate's.
    let (ok, err) = run(&["--tls-cert", &cert, "--tls-key", &ca, "--tls-ca", &ca]);
    assert!(!ok);
    assert!(
        err.contains("--tls-key") && err.contains("no usable private key"),
        "{err}"
    );
    let other = TlsFiles::generate(&dir.path().join("certs"), "other");
    let other_key = other.key.display().to_string();
    let (ok, err) = run(&[
        "--tls-cert",
        &cert,
        "--tls-key",
        &other_key,
        "--tls-ca",
        &ca,
    ]);
    assert!(!ok);
    assert!(err.contains("KeyMismatch"), "{err}");
}

/// SIGHUP reloads the certificate, key and CA files: a node rotated to a certificate of a new
/// CA serves it to new connections without a restart; files that do not load are refused and
/// the old certificate stays in use.
#[test]
fn sighup_reloads_a_rotated_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let old = TlsFiles::generate(&dir.path().join("certs"), "old");
    let new = TlsFiles::generate(&dir.path().join("certs"), "new");
    let live = TlsFiles {
        ca: dir.path().join("live-ca.pem"),
        ca_key: dir.path().join("live-ca.key"),
        cert: dir.path().join("live-cert.pem"),
        key: dir.path().join("live-key.pem"),
    };
    let install = |from: &TlsFiles| {
        std::fs::copy(&from.ca, &live.ca).unwrap();
        std::fs::copy(&from.cert, &live.cert).unwrap();
        std::fs::copy(&from.key, &live.key).unwrap();
    };
    install(&old);
    let cluster = Cluster::start(
        1,
        ClusterOpts {
            n: 1,
            w: 1,
            r: 1,
            tls: Some(live.clone()),
            ..ClusterOpts::default()
        },
    );
    let node = &cluster.nodes[0];
    let url = node.url();
    let put = |ca: &std::path::Path| {
        let ca = ca.display().to_string();
        kvcli(&["--node", &url, "--ca-file", &ca, "put", "k", "v"]).0
    };
    let hangup = || {
        let pid = node.pid().unwrap().to_string();
        assert!(Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success());
    };
    assert_eq!(put(&old.ca), 0, "the first certificate is served");
    assert_eq!(
        put(&new.ca),
        3,
        "a client of the new CA does not trust it yet"
    );

    // A certificate file that does not load: refused, the old certificate stays.
    std::fs::write(&live.cert, "not a certificate\n").unwrap();
    hangup();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(put(&old.ca), 0, "the old certificate stays in use");

    // The rotation: new files, one SIGHUP, no restart.
    install(&new);
    hangup();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while put(&new.ca) != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the new certificate was not served:\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(put(&old.ca), 3, "the old certificate is no longer served");
    let logs = cluster.logs();
    assert!(logs.contains("TLS files not reloaded"), "{logs}");
    assert!(
        logs.contains("TLS certificate, key and CA reloaded"),
        "{logs}"
    );
}

/// Mutual TLS (`--tls-require-client-cert`): nodes gossip and replicate presenting their own
/// certificates; a client with a certificate the cluster CA signed is served; one without a
/// certificate, or with a certificate another CA signed, is refused at the handshake and
/// reads nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_serves_only_clients_with_a_certificate_of_the_cluster_ca() {
    let dir = tempfile::tempdir().unwrap();
    let tls = TlsFiles::generate(&dir.path().join("certs"), "cluster");
    let other = TlsFiles::generate(&dir.path().join("certs"), "other");
    let (app_cert, app_key) = tls.issue("app", "app client");
    let (forged_cert, forged_key) = other.issue("forged", "app client");
    let mut extra = ClusterOpts::default().extra;
    extra.push("--tls-require-client-cert".into());
    // Converging proves gossip between nodes that each require the other's certificate.
    let cluster = Cluster::start(
        3,
        ClusterOpts {
            tls: Some(tls.clone()),
            extra,
            ..ClusterOpts::default()
        },
    );
    let (url, third) = (cluster.nodes[0].url(), cluster.nodes[2].url());
    let s = |p: &std::path::Path| p.display().to_string();
    let (ca, app_cert, app_key) = (s(&tls.ca), s(&app_cert), s(&app_key));
    let with_cert = |node: &str, cmd: &[&str]| {
        let mut args = vec![
            "--node",
            node,
            "--ca-file",
            &ca,
            "--cert-file",
            &app_cert,
            "--key-file",
            &app_key,
        ];
        args.extend(cmd);
        kvcli(&args)
    };

    // Replication between peers that require certificates: W=3, then R=3 from another node.
    let (code, _, err) = with_cert(&url, &["put", "k", "secret value", "--w", "3"]);
    assert_eq!(code, 0, "{err}\n{}", cluster.logs());
    let (code, out, err) = with_cert(&third, &["get", "k", "--r", "3"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("secret value\n"), "{out}");
    // HTTP too (kvcli metrics reads /metrics over https with the certificate).
    let (code, out, err) = with_cert(&url, &["metrics"]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.is_empty());

    // No certificate: refused, and the client learns nothing.
    let (code, out, err) = kvcli(&["--node", &url, "--ca-file", &ca, "get", "k"]);
    assert_ne!(code, 0, "served without a client certificate: {out}");
    assert!(!out.contains("secret"), "{out}");
    assert!(err.contains("--cert-file"), "told what is missing: {err}");
    println!("without a certificate: {}", err.trim());
    // A certificate of another CA: refused.
    let (forged_cert, forged_key) = (s(&forged_cert), s(&forged_key));
    let (code, out, err) = kvcli(&[
        "--node",
        &url,
        "--ca-file",
        &ca,
        "--cert-file",
        &forged_cert,
        "--key-file",
        &forged_key,
        "get",
        "k",
    ]);
    assert_ne!(code, 0, "served with another CA's certificate: {out}");
    assert!(!out.contains("secret"), "{out}");
    println!("another CA's certificate: {}", err.trim());
    // Half an identity is a usage error.
    let (code, _, err) = kvcli(&[
        "--node",
        &url,
        "--ca-file",
        &ca,
        "--cert-file",
        &app_cert,
        "get",
        "k",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--key-file"), "{err}");

    // The refusals are counted.
    let metrics = cluster.nodes[0]
        .get("/metrics")
        .expect("metrics over https");
    let failed: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("kv_tls_handshakes_failed_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the handshake failure counter");
    assert!(failed >= 2, "refused handshakes counted: {failed}");
}

//! Resource limits of client connections: a client that never reads its answers cannot grow
//! the node's memory, idle and trickling connections are closed, a query string that is not
//! valid percent-encoding is refused without harm, and the node keeps serving everyone else.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use kv_tests::{Cluster, ClusterOpts, Ws};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

fn one_node(extra: &[&str]) -> Cluster {
    let mut opts = ClusterOpts::one_replica();
    opts.extra.extend(extra.iter().map(|s| s.to_string()));
    Cluster::start(1, opts)
}

/// Resident memory of a process, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kb * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_cannot_grow_the_nodes_memory() {
    let cluster = one_node(&[]);
    let pid = cluster.nodes[0].pid().expect("node pid");
    let url = cluster.nodes[0].url();
    // A value of 512 KiB: 10,000 unread answers would be 5 GiB if the node buffered them.
    let big = "x".repeat(512 * 1024);
    let mut ws = Ws::connect(&url).await;
    let r = ws
        .request(json!({"op": "put", "key": "big", "value": big}))
        .await;
    assert_eq!(r["ok"], true, "{r}");
    let before = rss(pid);

    let (mut unread, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .expect("connect");
    let sender = tokio::spawn(async move {
        let mut sent = 0u64;
        for id in 0..10_000u64 {
            let frame = json!({"id": id, "op": "get", "key": "big"}).to_string();
            let send = unread.feed(Message::text(frame));
            match tokio::time::timeout(Duration::from_secs(5), send).await {
                Ok(Ok(())) => sent += 1,
                _ => break,
            }
            if id % 100 == 99
                && tokio::time::timeout(Duration::from_secs(5), unread.flush())
                    .await
                    .is_err()
            {
                break;
            }
        }
        // Keep the socket open (and unread) until the test is done looking.
        (sent, unread)
    });
    // Let the node do whatever it does with them.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let during = rss(pid);
    // Everyone else is still served promptly.
    let started = Instant::now();
    let pong = kv_tests::ws_request_blocking(&url, json!({"op": "ping"}));
    assert_eq!(pong["ok"], true, "{pong}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let (sent, unread) = sender.await.expect("sender task");
    let grew = during.saturating_sub(before);
    println!(
        "unread client: {sent} requests sent, node RSS {} MiB -> {} MiB",
        before >> 20,
        during >> 20
    );
    assert!(
        grew < 256 << 20,
        "the node grew by {} MiB for a client that never reads",
        grew >> 20
    );
    drop(unread);
    let r = ws.request(json!({"op": "get", "key": "big"})).await;
    assert_eq!(r["found"], true);
}

/// Does the server close `s` (EOF or reset) within `limit`?
fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return true,
        }
    }
    false
}

/// A WebSocket handshake on a raw socket; the 101 answer is read and dropped.
fn raw_websocket(addr: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).expect("handshake answer");
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{:?}", head);
    s
}

#[test]
fn idle_and_trickling_connections_are_closed() {
    let cluster = one_node(&["--idle-timeout-s", "2"]);
    let addr = cluster.nodes[0].addr.clone();

    // Idle: a handshake and then nothing. The node's clock starts when it has answered the
    // handshake, a moment before this side reads the answer: timing from after the read would
    // come out short of the timeout by that moment (it did, by 0.4 ms), so the time is taken
    // from just before the handshake.
    let started = Instant::now();
    let mut idle = raw_websocket(&addr);
    assert!(closed_within(&mut idle, Duration::from_secs(10)));
    let idle_after = started.elapsed();

    // Trickling: a masked text frame announcing 100 bytes, sent one byte every 300 ms.
    let mut slow = raw_websocket(&addr);
    slow.write_all(&[0x81, 0x80 | 100, 1, 2, 3, 4]).unwrap();
    let trickle_started = Instant::now();
    let mut closed = false;
    for _ in 0..40 {
        if slow.write_all(b"a").is_err() {
            closed = true;
            break;
        }
        if closed_within(&mut slow, Duration::from_millis(300)) {
            closed = true;
            break;
        }
    }
    assert!(closed, "a connection trickling one frame was never closed");
    let trickle_after = trickle_started.elapsed();

    // A request head that never ends is cut after the head timeout.
    let mut head = TcpStream::connect(&addr).unwrap();
    head.write_all(b"GET /health HTTP/1.1\r\n").unwrap();
    assert!(closed_within(&mut head, Duration::from_secs(20)));

    println!("idle closed after {idle_after:?}, trickling after {trickle_after:?}");
    assert!(idle_after >= Duration::from_secs(2), "{idle_after:?}");
    // The node still serves.
    assert!(kv_tests::http_get(&addr, "/health").is_some());
}

#[test]
fn a_bad_percent_escape_in_the_query_harms_nothing() {
    let tokens = std::env::temp_dir().join(format!("kv-limits-tokens-{}", std::process::id()));
    std::fs::write(&tokens, "a-real-token rw\n").unwrap();
    let cluster = one_node(&["--token-file", tokens.to_str().unwrap()]);
    let _ = std::fs::remove_file(&tokens);
    let addr = cluster.nodes[0].addr.clone();
    for query in ["token=%a\u{e9}", "token=%\u{e9}", "token=%", "token=%zz"] {
        let mut s = TcpStream::connect(&addr).unwrap();
        write!(
            s,
            "GET /?{query} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: \
             Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        )
        .unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with("HTTP/1.1 401"),
            "{query}: a bad token is refused, not a crash: {answer}"
        );
    }
    assert!(kv_tests::http_get(&addr, "/health").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_threads_sets_how_many_threads_serve_requests() {
    for n in [1usize, 3] {
        let cluster = one_node(&["--worker-threads", &n.to_string()]);
        let pid = cluster.nodes[0].pid().expect("running");
        assert_eq!(kv_tests::runtime_workers(pid), n, "--worker-threads {n}");
        let mut ws = Ws::connect(&cluster.nodes[0].url()).await;
        let r = ws
            .request(json!({"op": "put", "key": "k", "value": "v"}))
            .await;
        assert_eq!(r["ok"], true, "{r}");
        let r = ws.request(json!({"op": "get", "key": "k"})).await;
        assert_eq!(r["values"], json!(["v"]), "{r}");
    }
    // Zero is refused with a message, before anything starts.
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(kv_tests::kvd_bin())
        .args(["--worker-threads", "0", "--listen"])
        .arg(format!("127.0.0.1:{}", kv_tests::free_port()))
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--worker-threads must be at least 1"), "{err}");
}

/// One unmasked frame from the node: opcode and payload.
fn read_frame(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).expect("a frame head");
    let len = match h[1] & 0x7F {
        126 => {
            let mut b = [0u8; 2];
            s.read_exact(&mut b).unwrap();
            u16::from_be_bytes(b) as usize
        }
        127 => {
            let mut b = [0u8; 8];
            s.read_exact(&mut b).unwrap();
            u64::from_be_bytes(b) as usize
        }
        n => n as usize,
    };
    let mut body = vec![0; len];
    s.read_exact(&mut body).expect("a frame payload");
    (h[0] & 0x0F, body)
}

#[test]
fn a_frame_far_over_the_limit_is_answered_then_closed_from_its_head_alone() {
    let cluster = one_node(&[]);
    let addr = cluster.nodes[0].addr.clone();
    let mut s = raw_websocket(&addr);
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // Announces 9 MiB (over 4x the 2 MiB frame limit) and sends none of it.
    let mut head = vec![0x81, 0x80 | 127];
    head.extend_from_slice(&(9u64 << 20).to_be_bytes());
    head.extend_from_slice(&[1, 2, 3, 4]);
    s.write_all(&head).unwrap();
    // The reason as an error answer first, then a close frame with code 1009 (too big).
    let (op, answer) = read_frame(&mut s);
    assert_eq!(op, 0x1, "a text answer first");
    let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(answer["error"]["code"], "too_large", "{answer}");
    let (op, body) = read_frame(&mut s);
    assert_eq!(op, 0x8, "then a close frame");
    assert_eq!(u16::from_be_bytes([body[0], body[1]]), 1009);
    assert!(closed_within(&mut s, Duration::from_secs(5)));
    // The node still serves.
    assert!(kv_tests::http_get(&addr, "/health").is_some());
}

#[test]
fn pings_are_answered_and_keep_an_idle_connection_open() {
    let cluster = one_node(&["--idle-timeout-s", "2"]);
    let mut s = raw_websocket(&cluster.nodes[0].addr);
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = Instant::now();
    // A client library's keep-alive: a masked ping every half second, for twice the timeout.
    while started.elapsed() < Duration::from_secs(4) {
        let mask = [7, 1, 9, 3];
        let mut ping = vec![0x89, 0x80 | 2];
        ping.extend_from_slice(&mask);
        ping.extend(b"hi".iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        s.write_all(&ping).expect("the connection is open");
        assert_eq!(
            read_frame(&mut s),
            (0xA, b"hi".to_vec()),
            "a pong with the ping's data"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The node's heap is jemalloc; `KVD_ALLOCATOR=system` runs it on the C library's malloc
/// (what valgrind's heap tools see), and it serves the same either way.
#[test]
fn the_allocator_is_jemalloc_unless_the_environment_asks_for_the_system_one() {
    for (env, want) in [(None, "heap: jemalloc"), (Some("system"), "heap: system")] {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = kv_tests::free_port();
        let addr = format!("127.0.0.1:{port}");
        let log = dir.path().join("kvd.log");
        let mut cmd = std::process::Command::new(kv_tests::kvd_bin());
        cmd.args(["--listen", &addr, "--n", "1", "--w", "1", "--r", "1"])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"));
        cmd.env_remove("KVD_ALLOCATOR");
        if let Some(v) = env {
            cmd.env("KVD_ALLOCATOR", v);
        }
        let child = cmd.spawn().expect("start kvd");
        struct Kill(std::process::Child);
        impl Drop for Kill {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let guard = Kill(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        let text = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("listening on") {
                break text;
            }
            assert!(Instant::now() < deadline, "kvd did not start:\n{text}");
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(text.contains(want), "{want:?} not in the log:\n{text}");
        let url = format!("ws://{addr}");
        let r = kv_tests::ws_request_blocking(
            &url,
            json!({"id": 1, "op": "put", "key": "k", "value": "v"}),
        );
        assert_eq!(r["ok"], true, "{r}");
        let r = kv_tests::ws_request_blocking(&url, json!({"id": 2, "op": "get", "key": "k"}));
        assert_eq!(r["values"], json!(["v"]), "{r}");
        drop(guard);
    }
}

/// `kvd bench-storage | head -1`: when the reader has gone away the command ends quietly
/// (killed by SIGPIPE, as Unix tools are), without a panic on its next print.
#[test]
fn bench_storage_ends_quietly_when_its_reader_closes_the_pipe() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(kv_tests::kvd_bin())
        .args([
            "bench-storage",
            "--benchmarks",
            "fillseq",
            "--num",
            "2000",
            "--db",
        ])
        .arg(dir.path().join("db"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The read end closes before the table is printed: its first line meets a closed pipe.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "{:?} {stderr}",
        out.status
    );
}

/// `--memtable-mb` and `--block-cache-mb` bound the storage engine's memory: a 1 MiB memtable
/// flushes every MiB or so of writes, and a 1 MiB block cache holds no more than that however
/// much is read (`kv_storage_cache_bytes`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memtable_and_block_cache_sizes_follow_their_flags() {
    let mut cluster = Cluster::start(
        1,
        ClusterOpts {
            extra: vec![
                "--memtable-mb".into(),
                "1".into(),
                "--block-cache-mb".into(),
                "1".into(),
            ],
            ..ClusterOpts::one_replica()
        },
    );
    let url = cluster.nodes[0].url();
    let addr = cluster.nodes[0].addr.clone();
    let value = "v".repeat(8000);
    let mut ws = Ws::connect(&url).await;
    for i in 0..600 {
        let r = ws
            .request(json!({"op": "put", "key": format!("k{i}"), "value": format!("{i}{value}")}))
            .await;
        assert_eq!(r["ok"], true, "{r}");
    }
    // About 4.8 MB written: several memtables' worth.
    let deadline = Instant::now() + Duration::from_secs(30);
    while kv_tests::metric(&addr, "kv_storage_flushes_total") < 3 {
        assert!(
            Instant::now() < deadline,
            "fewer than 3 flushes of a 1 MiB memtable"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for i in 0..600 {
        let r = ws
            .request(json!({"op": "get", "key": format!("k{i}")}))
            .await;
        assert_eq!(r["values"], json!([format!("{i}{value}")]), "k{i}");
    }
    let cached = kv_tests::metric(&addr, "kv_storage_cache_bytes");
    assert!(
        cached > 0 && cached <= 1 << 20,
        "block cache holds {cached} bytes"
    );
    drop(ws);
    cluster.stop(0);
}

/// Out of file descriptors, a node backs off and says so once, not 20 lines a second (a log
/// that fills the disk it needs), keeps serving the connections it has, and takes new ones
/// again once descriptors are free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_the_node_backs_off_logs_once_and_recovers() {
    let cluster = one_node(&[]);
    let node = &cluster.nodes[0];
    let pid = node.pid().expect("node pid");
    let mut ws = Ws::connect(&node.url()).await;
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    // A limit a few descriptors above what the node holds now (`prlimit` sets it on the
    // running process).
    let limit = open + 8;
    let out = std::process::Command::new("prlimit")
        .args([format!("--nofile={limit}"), format!("--pid={pid}")])
        .output()
        .expect("run prlimit (util-linux)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // More connections than descriptors left: the ones past the limit wait in the backlog.
    let held: Vec<TcpStream> = (0..40)
        .map(|_| TcpStream::connect(&node.addr).expect("connect"))
        .collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let log = std::fs::read_to_string(&node.log).unwrap();
    let lines = log.lines().filter(|l| l.contains("accept failed")).count();
    assert!(
        (1..=2).contains(&lines),
        "{lines} 'accept failed' lines in 3 s:\n{log}"
    );
    // The connection it has is served meanwhile.
    let r = ws
        .request(json!({"op": "put", "key": "k", "value": "while-out"}))
        .await;
    assert_eq!(r["ok"], true, "{r}");
    // Descriptors free again: new connections are taken.
    drop(held);
    let mut fresh = tokio::time::timeout(Duration::from_secs(10), Ws::connect(&node.url()))
        .await
        .expect("a new connection is accepted once descriptors are free");
    let r = fresh.request(json!({"op": "get", "key": "k"})).await;
    assert_eq!(r["values"], json!(["while-out"]), "{r}");
}

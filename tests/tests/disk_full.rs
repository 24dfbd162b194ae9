//! A node whose disk fills up: writes are refused with a clear error and nothing of them is
//! kept, reads and /health go on, the log says so, and once space is freed writes are
//! accepted again without a restart; a restart then finds every acknowledged write.
//!
//! Before: the first flush that met the full disk poisoned the storage engine, and every write
//! was refused until the node was restarted, space freed or not, with nothing in the log. And
//! a commit-log segment whose reservation ran out of space kept the blocks it got, taking the
//! last free space from the writes.
//!
//! Needs root (it mounts a small tmpfs for the data dir): it fails, not skips, without it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use kv_tests::{free_port, http_get, start_kvd, Ws};
use serde_json::{json, Value};

/// A tmpfs of `size` mounted for the test, and the node on it: both gone on drop.
struct Disk {
    mount: PathBuf,
    node: Option<Child>,
    _dir: tempfile::TempDir,
}

impl Disk {
    fn mount(size: &str) -> Disk {
        let dir = tempfile::tempdir().expect("temp dir");
        let mount = dir.path().join("fs");
        std::fs::create_dir(&mount).unwrap();
        mount_tmpfs(&mount, size, false);
        Disk {
            mount,
            node: None,
            _dir: dir,
        }
    }

    /// Starts the node with `--reserve-mb reserve_mb`.
    fn start(&mut self, addr: &str, log: &Path, reserve_mb: u64) {
        let data_dir = self.mount.join("d");
        let args = [
            "--listen",
            addr,
            "--n",
            "1",
            "--sync",
            "interval",
            "--data-dir",
            data_dir.to_str().unwrap(),
            // Small memtables: flushes (and compactions) meet the full disk, not only the log.
            "--memtable-mb",
            "2",
            "--anti-entropy-interval-s",
            "0",
            "--reserve-mb",
            &reserve_mb.to_string(),
        ];
        self.node = Some(start_kvd(addr, args, log));
    }

    fn grow(&self, size: &str) {
        mount_tmpfs(&self.mount, size, true);
    }

    fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.node.take().expect("a running node");
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        child.wait().unwrap()
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        if let Some(mut c) = self.node.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
    }
}

/// `len` bytes of text that does not compress (xorshift over an alphabet).
fn value(seed: u64, len: usize) -> String {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(
                b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                    [(x % 62) as usize],
            )
        })
        .collect()
}

/// A node on a tmpfs of its own of `size`, with `--reserve-mb reserve_mb`: the disk, the
/// node's address, its log file and a client connection.
async fn node_on(size: &str, reserve_mb: u64) -> (Disk, String, PathBuf, Ws) {
    let mut disk = Disk::mount(size);
    let addr = format!("127.0.0.1:{}", free_port());
    let log = disk._dir.path().join("kvd.log");
    disk.start(&addr, &log, reserve_mb);
    let ws = Ws::connect(&format!("ws://{addr}")).await;
    (disk, addr, log, ws)
}

/// Puts the `i`th 8 KB value (key `k{i:05}`); the key, the value and the answer.
async fn put_8k(ws: &mut Ws, i: u64) -> (String, String, Value) {
    let (key, val) = (format!("k{i:05}"), value(i, 8 << 10));
    let r = ws
        .request(json!({"op": "put", "key": key, "value": val}))
        .await;
    (key, val, r)
}

fn health(addr: &str) -> Value {
    serde_json::from_str(&http_get(addr, "/health").expect("/health answers")).unwrap()
}

/// The hard case, with no reserve (`--reserve-mb 0`): writes go on until the file system
/// itself refuses them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_keeps_reads_and_recovers_once_space_is_freed() {
    let (mut disk, addr, log, mut ws) = node_on("36m", 0).await;
    let url = format!("ws://{addr}");

    // Write 8 KB values until the disk refuses one.
    let mut acked: Vec<(String, String)> = Vec::new();
    let mut refusal = None;
    for i in 0..20_000u64 {
        let (key, val, r) = put_8k(&mut ws, i).await;
        if r["ok"] == true {
            acked.push((key, val));
        } else {
            refusal = Some((key, r));
            break;
        }
    }
    let (refused_key, r) = refusal.expect("the disk filled up");
    assert!(acked.len() > 100, "only {} writes fitted", acked.len());
    let msg = r["error"]["message"].as_str().unwrap_or_default();
    assert_eq!(r["error"]["code"], "unavailable", "{r}");
    assert!(msg.contains("out of disk space"), "{r}");
    assert!(msg.contains("writes resume once space is freed"), "{r}");

    // Writes go on being tried until flushing is held up too (/health says so) and writes are
    // refused steadily. Some may fit meanwhile (the commit log takes a write where a table
    // does not fit, and a flush that gets through deletes segments), but not without bound:
    // once the memtables that cannot be flushed are full, every write is refused. Each
    // refused write is refused the same way and none of it is kept.
    let check_refusal = |r: &Value| {
        let msg = r["error"]["message"].as_str().unwrap_or_default();
        assert_eq!(r["error"]["code"], "unavailable", "{r}");
        assert!(msg.contains("out of disk space"), "{r}");
    };
    let mut refused = vec![refused_key];
    let mut refused_in_a_row = 1;
    let deadline = Instant::now() + Duration::from_secs(60);
    for i in 0u64.. {
        if refused_in_a_row >= 20 && health(&addr)["disk_full"] == true {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "writes still fit: {} refused in a row, /health: {}",
            refused_in_a_row,
            health(&addr)
        );
        let (key, val) = (format!("more{i:05}"), value(i + 1_000_000, 8 << 10));
        let r = ws
            .request(json!({"op": "put", "key": key, "value": val}))
            .await;
        if r["ok"] == true {
            acked.push((key, val));
            refused_in_a_row = 0;
        } else {
            check_refusal(&r);
            refused.push(key);
            refused_in_a_row += 1;
        }
    }
    // Reads and /health go on.
    for (key, val) in &acked {
        let r = ws.request(json!({"op": "get", "key": key})).await;
        assert_eq!(
            r["values"],
            json!([val]),
            "{key} while the disk is full: {r}"
        );
    }
    assert_eq!(health(&addr)["status"], "ok");

    // The volume grows (as an operator would make room): writes are accepted again, without
    // a restart, and the held-up flushes and compactions catch up.
    disk.grow("256m");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = ws
            .request(json!({"op": "put", "key": "after", "value": "freed"}))
            .await;
        if r["ok"] == true {
            break;
        }
        assert!(Instant::now() < deadline, "writes still refused: {r}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for i in 0..200u64 {
        let key = format!("later{i:03}");
        let r = ws
            .request(json!({"op": "put", "key": key, "value": value(i, 1024)}))
            .await;
        assert_eq!(r["ok"], true, "{r}");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while health(&addr)["disk_full"] != false {
        assert!(Instant::now() < deadline, "/health: {}", health(&addr));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The log said both (it looks once a second).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&log).unwrap();
        if text.contains("ERROR") && text.contains("disk full") && text.contains("disk space freed")
        {
            break;
        }
        assert!(Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(ws);
    let status = disk.stop();
    assert!(status.success(), "kvd exit: {status:?}");

    // A restart finds every acknowledged write, and none of the refused ones.
    disk.start(&addr, &log, 0);
    let mut ws = Ws::connect(&url).await;
    for (key, val) in &acked {
        let r = ws.request(json!({"op": "get", "key": key})).await;
        assert_eq!(r["values"], json!([val]), "{key} after the restart: {r}");
    }
    for key in &refused {
        let r = ws.request(json!({"op": "get", "key": key})).await;
        assert_eq!(r["found"], false, "refused {key} was kept: {r}");
    }
    let r = ws.request(json!({"op": "get", "key": "after"})).await;
    assert_eq!(r["values"], json!(["freed"]), "{r}");
    drop(ws);
    assert!(disk.stop().success());
}

/// Fills the file system holding `dir` with the file `dir/name` until it refuses more.
fn fill(dir: &Path, name: &str) {
    use std::io::Write;
    let mut f = std::fs::File::create(dir.join(name)).unwrap();
    for chunk in [1 << 20, 4 << 10] {
        while f.write_all(&vec![0xab; chunk]).is_ok() {}
    }
}

/// The case the held-up flush does not cover: the memtable has room, no flush is waiting, and
/// the commit log cannot grow. `/health` says so as long as a write would still not fit, and
/// stops saying so once space is freed, before any write finds out.
///
/// Before: `disk_full` stayed false while every write was refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_says_the_disk_is_full_while_the_commit_log_cannot_grow() {
    use kv_tests::metric;
    let (disk, addr, _log, mut ws) = node_on("36m", 0).await;
    let mut acked: Vec<(String, String)> = Vec::new();
    let mut n = 0u64;
    let mut put = async |ws: &mut Ws, acked: &mut Vec<(String, String)>| {
        n += 1;
        let (key, val, r) = put_8k(ws, n).await;
        if r["ok"] == true {
            acked.push((key, val));
        }
        r
    };

    // A full disk meets the memtable's rotation: its new segment gets no reservation (there
    // is no room for one) and its flush is held up, so writes are refused.
    fill(&disk.mount, "ballast-a");
    let deadline = Instant::now() + Duration::from_secs(60);
    let refused = loop {
        let r = put(&mut ws, &mut acked).await;
        if r["ok"] != true {
            break r;
        }
        assert!(Instant::now() < deadline, "writes still fit");
    };
    // Until the memtable is full they go to the segment's reserved space.
    assert!(
        acked.len() > 100,
        "{} writes fitted: {refused}",
        acked.len()
    );
    // Room again: the flush gets through (its segment is deleted) and writes go on, into the
    // unreserved segment.
    std::fs::remove_file(disk.mount.join("ballast-a")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if put(&mut ws, &mut acked).await["ok"] == true
            && metric(&addr, "kv_storage_flushes_total") >= 1
            && health(&addr)["disk_full"] == false
        {
            break;
        }
        assert!(Instant::now() < deadline, "/health: {}", health(&addr));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The disk fills again with the memtable far from full: only the commit log is stuck.
    fill(&disk.mount, "ballast-b");
    let r = put(&mut ws, &mut acked).await;
    assert_eq!(r["error"]["code"], "unavailable", "{r}");
    let h = health(&addr);
    assert_eq!(h["disk_full"], true, "{h}");
    let why = h["disk_full_reason"].as_str().unwrap_or_default();
    assert!(why.contains("the commit log cannot grow"), "{h}");
    assert!(why.contains("No space left on device"), "{h}");
    // It stays so while nothing changes.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(health(&addr)["disk_full"], true);

    // Space is freed: /health says so before any write is tried, and writes are accepted.
    std::fs::remove_file(disk.mount.join("ballast-b")).unwrap();
    let h = health(&addr);
    assert_eq!(h["disk_full"], false, "{h}");
    assert_eq!(h["disk_full_reason"], Value::Null, "{h}");
    let r = put(&mut ws, &mut acked).await;
    assert_eq!(r["ok"], true, "{r}");
    for (key, val) in &acked {
        let r = ws.request(json!({"op": "get", "key": key})).await;
        assert_eq!(r["values"], json!([val]), "{key}: {r}");
    }
}

/// Unmounts its path (lazily) on drop: declared before the cluster, so it runs after the
/// cluster's drop has stopped the nodes.
struct Unmount(Option<PathBuf>);

impl Drop for Unmount {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = Command::new("umount").arg("-l").arg(p).status();
        }
    }
}

/// Mounts a tmpfs of `size` at `at`, or with `remount` changes the size of the one there.
/// Free bytes of the file system holding `path` (tmpfs keeps none back for root).
fn free_bytes(path: &Path) -> u64 {
    let out = Command::new("df")
        .args(["-B1", "--output=avail"])
        .arg(path)
        .output()
        .expect("df");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("df answered {text}"))
}

/// With a reserve (`--reserve-mb`), a node stops taking puts while the disk still has room
/// for its flushes and compactions: deletes are accepted, a compaction then turns them into
/// free space, and puts resume, with no file touched by hand and no restart.
///
/// Before: a node filled its disk to the last block; with a memtable's worth of commit log on
/// it, nothing could be flushed, compacted or deleted until space was freed outside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_its_reserve_a_node_takes_deletes_and_compaction_brings_puts_back() {
    use kv_tests::metric;
    // A reserve for the compactions too: on so small a disk all the data sits in level 1,
    // and a level-0 compaction rewrites the whole of it before it removes its inputs.
    let (disk, addr, log, mut ws) = node_on("64m", 40).await;

    // 8 KB values until puts are refused steadily: a refused put is tried again once a flush
    // or compaction under way has had time to finish (and perhaps free some room).
    let mut acked: Vec<(String, String)> = Vec::new();
    let mut retried = false;
    let refused = loop {
        let (key, val, r) = put_8k(&mut ws, acked.len() as u64).await;
        if r["ok"] == true {
            acked.push((key, val));
            retried = false;
        } else if retried {
            break r;
        } else {
            retried = true;
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
        assert!(acked.len() < 10_000, "puts still accepted");
    };
    assert!(acked.len() > 1000, "{} puts fitted: {refused}", acked.len());
    assert_eq!(refused["error"]["code"], "unavailable", "{refused}");
    let msg = refused["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("kept for flushes and compaction"), "{msg}");
    assert!(msg.contains("deletes are accepted"), "{msg}");
    // It stopped well short of the reserve's end.
    let free = free_bytes(&disk.mount);
    assert!(free > 20 << 20, "{free} bytes free");
    // The node says what it keeps back and what it finds free.
    assert_eq!(metric(&addr, "kv_storage_reserve_bytes"), 40 << 20);
    let seen = metric(&addr, "kv_storage_disk_free_bytes");
    assert!(seen.abs_diff(free) < 4 << 20, "{seen} vs {free}");
    let h = health(&addr);
    assert_eq!(h["disk_full"], true, "{h}");
    let why = h["disk_full_reason"].as_str().unwrap_or_default();
    assert!(why.contains("kept for flushes and compaction"), "{h}");

    // Reads go on, and deletes are accepted: all but the first 100 keys.
    let (kept, doomed) = acked.split_at(100);
    for (n, (key, val)) in doomed.iter().enumerate() {
        let read = ws.request(json!({"op": "get", "key": key})).await;
        assert_eq!(read["values"], json!([val]), "{key}: {read}");
        let r = ws
            .request(json!({"op": "delete", "key": key, "context": read["context"]}))
            .await;
        assert_eq!(r["ok"], true, "delete {key}: {r}");
        if n == 10 {
            // Taken below the reserve, where puts are still refused: a delete makes room
            // only once it is compacted.
            assert_eq!(health(&addr)["disk_full"], true);
            let r = ws
                .request(json!({"op": "put", "key": "late", "value": "v"}))
                .await;
            assert_eq!(r["error"]["code"], "unavailable", "{r}");
        }
    }

    // A compaction (its flush included) runs below the reserve and drops the deleted values.
    let c = ws.request(json!({"op": "compact"})).await;
    assert!(c["bytes_after"].as_u64().is_some(), "{c}");
    assert!(
        c["bytes_after"].as_u64() < Some(c["bytes_before"].as_u64().unwrap() / 4),
        "{c}"
    );
    // Free space is back above the reserve: /health says so, and puts are accepted again.
    let deadline = Instant::now() + Duration::from_secs(30);
    while health(&addr)["disk_full"] != false {
        assert!(Instant::now() < deadline, "/health: {}", health(&addr));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let r = ws
        .request(json!({"op": "put", "key": "late", "value": "v"}))
        .await;
    assert_eq!(r["ok"], true, "{r}");
    for (key, val) in kept {
        let r = ws.request(json!({"op": "get", "key": key})).await;
        assert_eq!(r["values"], json!([val]), "{key}: {r}");
    }
    for (key, _) in doomed.iter().step_by(50) {
        let r = ws.request(json!({"op": "get", "key": key})).await;
        assert_eq!(r["found"], false, "{key}: {r}");
    }
    // The log said when puts stopped and when they resumed.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("kept for flushes and compaction")
            && text.contains("writes are accepted again")
        {
            break;
        }
        assert!(Instant::now() < deadline, "kvd log:\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn mount_tmpfs(at: &Path, size: &str, remount: bool) {
    let opts = match remount {
        true => format!("remount,size={size}"),
        false => format!("size={size}"),
    };
    let mut cmd = Command::new("mount");
    if !remount {
        cmd.args(["-t", "tmpfs"]);
    }
    cmd.args(["-o", &opts]);
    if !remount {
        cmd.arg("tmpfs");
    }
    let out = cmd.arg(at).output().expect("run mount");
    assert!(
        out.status.success(),
        "this test needs root to mount a small tmpfs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Copies the files of `from` into `to`, recursively.
fn copy_tree(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&dest).unwrap();
            copy_tree(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}

/// In a cluster, one replica whose disk fills costs no write: the others take them (W=2 of
/// 3), also those coordinated by the full node itself, whose own replica refuses to mint. Once
/// its volume grows, repair brings it every write it missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_with_a_full_disk_costs_the_cluster_no_write() {
    use kv_tests::{kvcli, metric, Cluster, ClusterOpts};
    let mut unmount = Unmount(None);
    let mut opts = ClusterOpts::default();
    // No reserve, as in `Disk::start`.
    opts.extra.extend(
        [
            "--memtable-mb",
            "2",
            "--anti-entropy-interval-s",
            "0",
            "--reserve-mb",
            "0",
        ]
        .map(String::from),
    );
    let mut cluster = Cluster::start(3, opts);
    // n3's data dir moves onto a small volume of its own.
    cluster.stop(2);
    let dir = cluster.nodes[2].data_dir.clone();
    let moved = dir.with_extension("before");
    std::fs::rename(&dir, &moved).unwrap();
    std::fs::create_dir(&dir).unwrap();
    mount_tmpfs(&dir, "24m", false);
    unmount.0 = Some(dir.clone());
    copy_tree(&moved, &dir);
    cluster.restart(2);
    cluster.wait_converged(Duration::from_secs(30));
    let full = cluster.nodes[2].addr.clone();

    // Write through every node in turn until n3 refuses for lack of space, then 60 more.
    let urls: Vec<String> = cluster.nodes.iter().map(|n| n.url()).collect();
    let mut conns = Vec::new();
    for u in &urls {
        conns.push(Ws::connect(u).await);
    }
    let mut acked: Vec<(String, String)> = Vec::new();
    let mut after_full = 0;
    for i in 0..20_000u64 {
        let (key, val) = (format!("k{i:05}"), value(i, 8 << 10));
        let r = conns[i as usize % 3]
            .request(json!({"op": "put", "key": key, "value": val}))
            .await;
        assert_eq!(
            r["ok"],
            true,
            "write {i} through {}: {r}",
            urls[i as usize % 3]
        );
        acked.push((key, val));
        let looked = i % 10 == 0 && metric(&full, "kv_storage_no_space_refusals_total") > 0;
        if after_full > 0 || looked {
            after_full += 1;
            if after_full > 60 {
                break;
            }
        }
    }
    assert!(after_full > 60, "n3's disk never filled");
    assert_eq!(health(&full)["status"], "ok");
    // Reads at R=2 go on everywhere, n3 included as coordinator.
    for (i, (key, val)) in acked.iter().enumerate().step_by(7) {
        let r = conns[i % 3].request(json!({"op": "get", "key": key})).await;
        assert_eq!(r["values"], json!([val]), "{key}: {r}");
    }
    drop(conns);
    // `status` through another node shows which member is full.
    let disk_full_in_status = |want: bool| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (code, out, err) = kvcli(&["--node", &urls[0], "--json", "status"]);
            assert_eq!(code, 0, "{err}");
            let status: Value = serde_json::from_str(out.trim()).unwrap();
            let full_of = |i: usize| {
                let id = cluster.nodes[i].id.as_str();
                let nodes = status["nodes"].as_array().unwrap();
                nodes.iter().find(|n| n["id"] == id).unwrap()["disk_full"].clone()
            };
            assert_eq!(
                (full_of(0), full_of(1)),
                (json!(false), json!(false)),
                "{status}"
            );
            if full_of(2) == json!(want) {
                return;
            }
            assert!(Instant::now() < deadline, "{status}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    disk_full_in_status(true);
    let (_, out, _) = kvcli(&["--node", &urls[0], "status"]);
    assert!(out.contains("up, disk full"), "{out}");
    // With the reason, as the full node's own /health gives it.
    let reason = format!("{} disk full: ", cluster.nodes[2].id);
    assert!(out.contains(&reason), "{out}");

    // n3's volume grows; repair brings it what it refused.
    mount_tmpfs(&dir, "512m", true);
    let deadline = Instant::now() + Duration::from_secs(30);
    while health(&full)["disk_full"] != false {
        assert!(Instant::now() < deadline, "/health: {}", health(&full));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    disk_full_in_status(false);
    let node = format!("ws://{full}");
    let (code, out, err) = kvcli(&["--node", &node, "--timeout", "120", "--json", "repair"]);
    assert_eq!(code, 0, "{out}{err}");
    let mut ws = Ws::connect(&node).await;
    for (key, val) in &acked {
        let r = ws
            .request(json!({"op": "get", "key": key, "local": true}))
            .await;
        assert_eq!(r["values"], json!([val]), "{key} on n3 after repair: {r}");
    }
}

/// `kvcli autoscale`'s full-disk rule, end to end: a node that refuses writes for lack of
/// space (here, below its reserve) makes the autoscaler add a node, and say why, while the
/// load alone would not. Its launch command gets the decision (count, sizes, reason).
///
/// Before: the rule was checked only by unit tests of the policy and of the metric's parsing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autoscale_adds_a_node_when_one_refuses_writes_for_lack_of_space() {
    use kv_tests::metric;
    let (disk, addr, _log, mut ws) = node_on("64m", 40).await;
    fill(&disk.mount, "ballast");
    // The node looks at its free space again as it commits: puts are refused soon.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut i = 0;
    loop {
        i += 1;
        if put_8k(&mut ws, i).await.2["ok"] != true && metric(&addr, "kv_storage_disk_full") == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "puts still accepted");
    }

    let sim = disk._dir.path().join("manager");
    std::fs::create_dir(&sim).unwrap();
    let calls = sim.join("calls");
    std::fs::write(
        sim.join("launch.sh"),
        r#"echo "count=$KV_AUTOSCALE_COUNT current=$KV_AUTOSCALE_CURRENT target=$KV_AUTOSCALE_TARGET reason=$KV_AUTOSCALE_REASON" >> "$CALLS""#,
    )
    .unwrap();
    let (out, err) = (sim.join("autoscale.out"), sim.join("autoscale.err"));
    let mut scaler = Stopped(
        Command::new(kv_tests::kvcli_bin())
            .args(["--node", &format!("ws://{addr}"), "--json", "autoscale"])
            .args(["--min", "1", "--max", "2", "--target-ops", "100000"])
            .args(["--interval-s", "1", "--window-s", "3", "--cooldown-s", "1"])
            .arg("--launch")
            .arg(format!("sh {}", sim.join("launch.sh").display()))
            // Required with --launch; never called here (nothing is removed).
            .args(["--retire", "false"])
            .arg("--dir")
            .arg(sim.join("scaled"))
            .env("CALLS", &calls)
            .env_remove("KV_NODE")
            .stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .expect("start kvcli autoscale"),
    );

    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read_to_string(&calls)
        .unwrap_or_default()
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "no launch: {}{}",
            std::fs::read_to_string(&out).unwrap_or_default(),
            std::fs::read_to_string(&err).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let call = std::fs::read_to_string(&calls).unwrap();
    assert!(
        call.starts_with("count=1 current=1 target=2 reason="),
        "{call}"
    );
    assert!(
        call.contains("refuses writes for lack of disk space"),
        "{call}"
    );
    let decisions: Vec<Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["event"] == "decision" && e["action"] == "scale_out")
        .collect();
    assert_eq!(decisions.len(), 1, "{decisions:?}");
    assert_eq!(decisions[0]["count"], 1, "{}", decisions[0]);
    let _ = Command::new("kill")
        .arg("-INT")
        .arg(scaler.0.id().to_string())
        .status();
    let status = scaler.0.wait().unwrap();
    assert!(status.success(), "{status}");
}

/// A child process killed on drop, for a test that fails before it stops it (`kill` does
/// nothing to one already waited for, so no other process can get the signal).
struct Stopped(Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

//! A node whose disk fails under it: the ext4 file system holding its data dir hits an error
//! and remounts itself read-only (`errors=remount-ro`, the error raised through
//! `/sys/fs/ext4/DEV/trigger_fs_error` as a failing disk or a damaged block would raise it).
//! The node keeps serving reads and says that its storage failed: `/health` and `/ready` answer
//! 503, `status` shows it, `/metrics` has `kv_storage_failed 1`, the log has an ERROR line.
//! Once the file system is repaired (`e2fsck`) and the node restarted, every write it
//! acknowledged is there and writes are taken again.
//!
//! Before: the engine refused every write after the error, and `/health` answered 200 with
//! `"status":"ok"`, so neither a liveness probe nor an operator could tell.
//!
//! Needs root, a loop device, `mkfs.ext4` and `e2fsck` (util-linux and e2fsprogs): it fails,
//! not skips, without them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use kv_tests::{free_port, http_get_full, kvcli, metric, start_kvd, Ws};
use serde_json::{json, Value};

/// An ext4 image on a loop device, mounted for the test, and the node on it: all gone on drop.
struct Volume {
    mount: PathBuf,
    device: String,
    node: Option<Child>,
    _dir: tempfile::TempDir,
}

/// Runs `cmd`, failing the test with its output unless it exits with one of `ok` codes.
fn run(cmd: &mut Command, ok: &[i32]) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let code = out.status.code().unwrap_or(-1);
    assert!(
        ok.contains(&code),
        "{cmd:?} exited {code} (this test needs root, a loop device, mkfs.ext4 and e2fsck): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl Volume {
    fn create(bytes: u64) -> Volume {
        let dir = tempfile::tempdir().expect("temp dir");
        let image = dir.path().join("disk.img");
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(bytes))
            .expect("image file");
        run(
            Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image),
            &[0],
        );
        let device = run(
            Command::new("losetup").args(["-f", "--show"]).arg(&image),
            &[0],
        );
        let mount = dir.path().join("fs");
        std::fs::create_dir(&mount).unwrap();
        let v = Volume {
            mount,
            device,
            node: None,
            _dir: dir,
        };
        v.mount_rw();
        v
    }

    fn mount_rw(&self) {
        run(
            Command::new("mount")
                .args(["-o", "errors=remount-ro", &self.device])
                .arg(&self.mount),
            &[0],
        );
    }

    /// Raises a file system error: ext4 aborts its journal and remounts read-only.
    fn fail(&self) {
        let name = Path::new(&self.device).file_name().unwrap();
        let knob = Path::new("/sys/fs/ext4")
            .join(name)
            .join("trigger_fs_error");
        std::fs::write(&knob, "kv-tests: disk failure").expect("trigger the ext4 error");
    }

    /// Unmounts, repairs (`e2fsck -fy`: 0 clean, 1 errors corrected) and mounts again.
    fn repair(&self) {
        run(Command::new("umount").arg(&self.mount), &[0]);
        run(Command::new("e2fsck").args(["-fy", &self.device]), &[0, 1]);
        self.mount_rw();
    }

    fn start(&mut self, addr: &str, log: &Path) {
        let data_dir = self.mount.join("d");
        let args = [
            "--listen",
            addr,
            "--n",
            "1",
            "--sync",
            "always",
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--anti-entropy-interval-s",
            "0",
            "--reserve-mb",
            "0",
        ];
        self.node = Some(start_kvd(addr, args, log));
    }

    /// Stops the node: SIGTERM, then SIGKILL if it has not exited within 10 s.
    fn stop(&mut self) {
        let mut child = self.node.take().expect("a running node");
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.wait();
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        if let Some(mut c) = self.node.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
        let _ = Command::new("losetup").args(["-d", &self.device]).status();
    }
}

fn get_json(addr: &str, path: &str) -> (u16, Value) {
    let (code, body) = http_get_full(addr, path).expect("an answer");
    (code, serde_json::from_str(&body).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_that_fails_under_a_node_stops_its_writes_visibly_and_loses_nothing_acknowledged() {
    let mut vol = Volume::create(64 << 20);
    let addr = format!("127.0.0.1:{}", free_port());
    let log = vol._dir.path().join("kvd.log");
    vol.start(&addr, &log);
    let url = format!("ws://{addr}");
    let mut ws = Ws::connect(&url).await;
    let (code, h) = get_json(&addr, "/health");
    assert_eq!(
        (code, &h["status"], &h["storage_error"]),
        (200, &json!("ok"), &Value::Null)
    );

    let acked: Vec<(String, String)> = (0..200)
        .map(|i| (format!("key{i:03}"), format!("value {i}")))
        .collect();
    for (k, v) in &acked {
        let r = ws.request(json!({"op": "put", "key": k, "value": v})).await;
        assert_eq!(r["ok"], true, "{r}");
    }

    vol.fail();
    // The next write meets the read-only file system: refused, and so is every one after it.
    let r = ws
        .request(json!({"op": "put", "key": "late", "value": "x"}))
        .await;
    assert_eq!(r["ok"], false, "{r}");
    for i in 0..3 {
        let r = ws
            .request(json!({"op": "put", "key": format!("later{i}"), "value": "x"}))
            .await;
        assert_eq!(r["ok"], false, "{r}");
    }
    // Reads go on.
    for (k, v) in &acked {
        let r = ws.request(json!({"op": "get", "key": k})).await;
        assert_eq!(r["values"], json!([v]), "{k}: {r}");
    }
    // And the node says its storage failed, everywhere an operator or a probe looks.
    let (code, h) = get_json(&addr, "/health");
    assert_eq!(code, 503, "{h}");
    assert_eq!(h["status"], "storage_failed", "{h}");
    let why = h["storage_error"].as_str().unwrap_or_default();
    assert!(why.contains("Read-only file system"), "{h}");
    let (code, r) = get_json(&addr, "/ready");
    assert_eq!((code, &r["ready"]), (503, &json!(false)), "{r}");
    assert_eq!(metric(&addr, "kv_storage_failed"), 1);
    let (code, out, err) = kvcli(&["--node", &url, "--json", "status"]);
    assert_eq!(code, 0, "{err}");
    let status: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["nodes"][0]["storage_failed"], true, "{status}");
    let why = status["nodes"][0]["storage_error"]
        .as_str()
        .unwrap_or_default();
    assert!(why.contains("Read-only file system"), "{status}");
    let (_, out, _) = kvcli(&["--node", &url, "status"]);
    assert!(out.contains("up, storage failed"), "{out}");
    assert!(out.contains("storage failed: "), "{out}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("ERROR") && text.contains("storage failed") {
            break;
        }
        assert!(Instant::now() < deadline, "kvd log:\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The disk is repaired and the node restarted: every acknowledged write is there, none
    // of the refused ones, and writes are taken again.
    drop(ws);
    vol.stop();
    vol.repair();
    vol.start(&addr, &log);
    let mut ws = Ws::connect(&url).await;
    let (code, h) = get_json(&addr, "/health");
    assert_eq!((code, &h["status"]), (200, &json!("ok")), "{h}");
    for (k, v) in &acked {
        let r = ws.request(json!({"op": "get", "key": k})).await;
        assert_eq!(r["values"], json!([v]), "{k} after the repair: {r}");
    }
    let r = ws.request(json!({"op": "get", "key": "late"})).await;
    assert_eq!(r["found"], false, "{r}");
    let r = ws
        .request(json!({"op": "put", "key": "late", "value": "x"}))
        .await;
    assert_eq!(r["ok"], true, "{r}");
}

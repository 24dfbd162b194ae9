//! `kvd dev`, the README's first command: a ready local cluster, and the same cluster with its
//! data when the command is run again over the same directory (it used to wait for a ring of
//! exactly the nodes started so far, which a restarted node never shows, and gave up).

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use kv_tests::{kvcli, kvd_bin};
use serde_json::Value;

/// Three consecutive free ports on 127.0.0.1 (the first is returned).
fn free_ports(k: u16) -> u16 {
    for _ in 0..200 {
        let base = kv_tests::free_port();
        if base > u16::MAX - k {
            continue;
        }
        let held: Vec<_> = (0..k)
            .map_while(|i| TcpListener::bind(("127.0.0.1", base + i)).ok())
            .collect();
        if held.len() == k as usize {
            return base;
        }
    }
    panic!("no {k} consecutive free ports");
}

/// A running `kvd dev`; dropping it sends SIGTERM (which stops every node it started) and
/// waits, then kills it.
struct Dev(Child);

impl Drop for Dev {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid with a valid signal.
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGTERM);
        }
        for _ in 0..300 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `kvd dev --nodes 3` in `dir` and waits for its "ready" line.
fn start(dir: &std::path::Path, base: u16) -> Dev {
    let mut child = Command::new(kvd_bin())
        .args([
            "dev",
            "--nodes",
            "3",
            "--base-port",
            &base.to_string(),
            "--dir",
        ])
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start kvd dev");
    let out = child.stdout.take().unwrap();
    let dev = Dev(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    while std::time::Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) if line.contains("is ready") => return dev,
            Ok(line) => seen.push(line),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    panic!("kvd dev did not say it was ready: {seen:?}");
}

#[test]
fn kvd_dev_starts_a_ready_cluster_and_starts_it_again_with_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let base = free_ports(3);
    let url = format!("ws://127.0.0.1:{base}");
    {
        let _dev = start(dir.path(), base);
        let (code, _, err) = kvcli(&["--node", &url, "put", "hello", "world"]);
        assert_eq!(code, 0, "{err}");
        let (code, out, err) = kvcli(&["--node", &url, "--json", "status"]);
        assert_eq!(code, 0, "{err}");
        let status: Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(status["nodes"].as_array().unwrap().len(), 3, "{status}");
    }
    // The same command again over the same directory: the same cluster, with its data.
    let _dev = start(dir.path(), base);
    let (code, out, err) = kvcli(&["--node", &url, "--json", "get", "hello"]);
    assert_eq!(code, 0, "{err}");
    let got: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(got["values"], serde_json::json!(["world"]), "{got}");
    let second = format!("ws://127.0.0.1:{}", base + 2);
    let (code, _, err) = kvcli(&["--node", &second, "put", "again", "yes"]);
    assert_eq!(code, 0, "{err}");
    // The logs too: each node's log holds both runs.
    let log = std::fs::read_to_string(dir.path().join("n1.log")).unwrap();
    assert_eq!(log.matches("storage opened").count(), 2, "{log}");
}

/// `kvd dev --nodes 2` in a process group of its own, with the nodes it starts, so a test can
/// clean up the whole group whatever happens.
fn two_node_dev_in_its_own_group(dir: &std::path::Path, base: u16) -> Child {
    Command::new(kvd_bin())
        .args([
            "dev",
            "--nodes",
            "2",
            "--base-port",
            &base.to_string(),
            "--dir",
        ])
        .arg(dir)
        .process_group(0)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start kvd dev")
}

/// A port of the cluster held by something else, which accepts connections and never answers:
/// `kvd dev` neither hangs on it nor takes it for its node, but says which node could not
/// start and why, and stops the nodes it had started.
#[test]
fn kvd_dev_reports_a_node_that_cannot_take_its_port_and_leaves_nothing_running() {
    let dir = tempfile::tempdir().unwrap();
    let base = free_ports(2);
    let squatter = TcpListener::bind(("127.0.0.1", base + 1)).unwrap();
    let mut child = two_node_dev_in_its_own_group(dir.path(), base);
    // A guard against hanging (the old behaviour), not a speed target: dev gives up on a
    // node after 30 s on its own.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            // SAFETY: kill(2) on the process group we made, with a valid signal.
            unsafe {
                libc::kill(-(child.id() as i32), libc::SIGKILL);
            }
            let _ = child.wait();
            panic!("kvd dev hangs");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("node n2 exited during start"), "{err}");
    assert!(
        err.to_lowercase().contains("address"),
        "the node's reason: {err}"
    );
    // n1 was stopped: its port is free again.
    TcpListener::bind(("127.0.0.1", base)).expect("n1's port is free");
    drop(squatter);
}

/// SIGTERM while the nodes are still starting: dev stops the ones it started and exits 0
/// (the signal used to kill dev by its default action and leave its nodes running).
#[test]
fn kvd_dev_stopped_while_its_nodes_start_leaves_nothing_running() {
    let dir = tempfile::tempdir().unwrap();
    let base = free_ports(2);
    let mut child = two_node_dev_in_its_own_group(dir.path(), base);
    // Whatever happens below, the group (dev and its nodes) goes at the end.
    struct Group(i32);
    impl Drop for Group {
        fn drop(&mut self) {
            // SAFETY: kill(2) on the process group this test made.
            unsafe { libc::kill(-self.0, libc::SIGKILL) };
        }
    }
    let _group = Group(child.id() as i32);
    let pid_of = |node: &str| -> Option<i32> {
        let data = dir.path().join(node);
        let out = Command::new("pgrep")
            .args(["-f", &format!("data-dir {}( |$)", data.display())])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    // n1 up, then paused: dev cannot see it healthy, nor n2 join through it, so it stays in
    // its start.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let n1 = loop {
        let ready = std::fs::read_to_string(dir.path().join("n1.log"))
            .is_ok_and(|l| l.contains("listening on"));
        if let (true, Some(pid)) = (ready, pid_of("n1")) {
            break pid;
        }
        assert!(std::time::Instant::now() < deadline, "n1 never started");
        std::thread::sleep(Duration::from_millis(50));
    };
    // SAFETY: kill(2) with valid signals on processes this test started.
    unsafe { libc::kill(n1, libc::SIGSTOP) };
    std::thread::sleep(Duration::from_millis(500));
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
        libc::kill(n1, libc::SIGCONT);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            // SAFETY: the process group made above.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            panic!("kvd dev did not stop");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("stopped while starting"), "{text}");
    assert_eq!(
        (pid_of("n1"), pid_of("n2")),
        (None, None),
        "a node is left running"
    );
}

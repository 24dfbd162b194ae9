//! Regression: a flipped byte in the middle of the commit log (whole records after it) was cut
//! as a torn tail, and the node started without the acknowledged writes after it, saying so
//! only in an INFO line. Now the node refuses to start, naming the file and offset and the way
//! on; `--commit-log-recovery skip-damaged` starts it with every record but the damaged one,
//! says so in a WARN line, and mints under a new actor name.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kv_tests::{kvd_bin, ws_request_blocking, Cluster, ClusterOpts};
use serde_json::json;

#[test]
fn a_damaged_commit_log_refuses_the_start_unless_told_to_skip_the_damage() {
    let mut cluster = Cluster::start(1, ClusterOpts::one_replica());
    let url = cluster.nodes[0].url();
    let n = 40;
    for i in 0..n {
        let r = ws_request_blocking(
            &url,
            json!({"op": "put", "key": format!("k{i:02}"), "value": format!("v{i}")}),
        );
        assert_eq!(r["ok"], true, "{r}");
    }
    // Killed: nothing is flushed, every acknowledged write is only in the commit log.
    cluster.kill(0);
    let storage = cluster.nodes[0].data_dir.join("storage");
    let log = std::fs::read_dir(&storage)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .expect("a commit-log segment");
    let mut data = std::fs::read(&log).unwrap();
    let used = data.iter().rposition(|&b| b != 0).unwrap() + 1;
    let at = used / 3;
    data[at] ^= 0x20;
    std::fs::write(&log, &data).unwrap();

    // Started as before: refused, with one line naming the segment and the way on.
    let node = &cluster.nodes[0];
    let mut child = Command::new(kvd_bin())
        .args(["--id", &node.id, "--listen", &node.addr])
        .arg("--data-dir")
        .arg(&node.data_dir)
        .args(["--n", "1", "--w", "1", "--r", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start kvd");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("kvd started over a damaged commit log");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "{err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("kvd: "))
        .unwrap_or_else(|| panic!("no error line: {err}"));
    let name = log.file_name().unwrap().to_str().unwrap();
    for part in [
        name,
        "damaged, not torn",
        "--commit-log-recovery skip-damaged",
    ] {
        assert!(line.contains(part), "{part:?} missing from: {line}");
    }
    assert_eq!(
        std::fs::read(&log).unwrap(),
        data,
        "the refused start changed nothing"
    );

    // Told to skip the damage: every write but the damaged record's is there.
    cluster.set_flag(0, "--commit-log-recovery", "skip-damaged");
    cluster.restart(0);
    let missing: Vec<usize> = (0..n)
        .filter(|i| {
            let r = ws_request_blocking(&url, json!({"op": "get", "key": format!("k{i:02}")}));
            r["values"] != json!([format!("v{i}")])
        })
        .collect();
    assert_eq!(
        missing.len(),
        1,
        "only the damaged record is lost: {missing:?}"
    );
    let log_text = std::fs::read_to_string(&cluster.nodes[0].log).unwrap();
    assert!(
        log_text
            .lines()
            .any(|l| l.contains("WARN") && l.contains("damaged commit-log records skipped")),
        "{log_text}"
    );
    assert!(
        log_text.contains("damaged commit-log records skipped: versions are minted as"),
        "a new actor name: {log_text}"
    );
}

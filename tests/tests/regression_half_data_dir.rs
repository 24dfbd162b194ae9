//! Regression: a data dir with only half of itself started as something else, silently. With
//! `storage/` gone but `node-identity.json` kept, the node started empty under its old
//! identity (and actor name); with the identity gone but the data kept, it served the data
//! under an id taken from `--listen`. Both now refuse to start with one line saying what is
//! missing and the way on, and `--id` says whose data it is.

use std::path::Path;
use std::process::{Command, Stdio};

use kv_tests::{kvd_bin, ws_request_blocking, Cluster, ClusterOpts};
use serde_json::json;

/// Runs kvd on `data` (with `--id` when given) and returns its exit status and stderr, or
/// `None` when it is still running after two seconds (it is then stopped).
fn start(data: &Path, addr: &str, id: Option<&str>) -> Option<(i32, String)> {
    let mut cmd = Command::new(kvd_bin());
    cmd.args(["--listen", addr, "--n", "1", "--w", "1", "--r", "1"])
        .arg("--data-dir")
        .arg(data)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(id) = id {
        cmd.args(["--id", id]);
    }
    let mut child = cmd.spawn().expect("start kvd");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while std::time::Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
            return Some((status.code().unwrap_or(-1), err));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

#[test]
fn a_data_dir_with_half_of_itself_refuses_to_start() {
    let mut cluster = Cluster::start(1, ClusterOpts::one_replica());
    let url = cluster.nodes[0].url();
    for i in 0..20 {
        let r = ws_request_blocking(
            &url,
            json!({"op": "put", "key": format!("k{i}"), "value": "v"}),
        );
        assert_eq!(r["ok"], true, "{r}");
    }
    assert_eq!(cluster.stop(0), Some(0));
    let node = &cluster.nodes[0];
    let (data, addr, id) = (node.data_dir.clone(), node.addr.clone(), node.id.clone());

    // Storage gone, identity kept: refused, naming the node, whatever --id says.
    let aside = data.with_extension("storage-aside");
    std::fs::rename(data.join("storage"), &aside).unwrap();
    for flag in [None, Some(id.as_str())] {
        let (code, err) = start(&data, &addr, flag).expect("refused, not started");
        assert_ne!(code, 0, "{err}");
        let line = err.lines().find(|l| l.starts_with("kvd: ")).unwrap_or(&err);
        assert!(
            line.contains(&format!("identity of node '{id}' but no storage")),
            "{line}"
        );
    }
    assert!(
        !data.join("storage").exists(),
        "the refused start created nothing"
    );
    std::fs::rename(&aside, data.join("storage")).unwrap();

    // Identity gone, data kept: refused without --id; with it, the node serves its data.
    let identity = data.join("node-identity.json");
    std::fs::remove_file(&identity).unwrap();
    let (code, err) = start(&data, &addr, None).expect("refused, not started");
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains("no node-identity.json") && err.contains("--id"),
        "{err}"
    );
    assert!(!identity.exists());
    cluster.restart(0);
    let r = ws_request_blocking(&url, json!({"op": "get", "key": "k7"}));
    assert_eq!(r["values"], json!(["v"]), "{r}");
    assert!(identity.exists(), "a new identity is written");
}

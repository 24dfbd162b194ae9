//! The autoscaler under load: a real `kvcli autoscale` process watches a 3-node cluster while
//! `kvcli bench` loads it; the autoscaler adds a node that joins, and once the load stops it
//! drains and removes that node again.
//! - Locally (it starts and stops kvd itself), with a writer of our own writing throughout:
//!   every write it got an acknowledgement for is read back with R = 2 afterwards.
//! - With `--launch` / `--retire` commands, which get the documented environment.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kv_tests::{kvcli_bin, Cluster, ClusterOpts, Ws};
use serde_json::{json, Value};

/// The autoscaler process and the kvd processes it started: killed when the test ends, also
/// when it fails (its nodes run in their own process group, outside the cluster's reach).
struct Scaler {
    child: Child,
    out: PathBuf,
    err: PathBuf,
    /// Where launch commands leave `<id>.pid` files of the nodes they start.
    pid_dir: Option<PathBuf>,
}

impl Scaler {
    /// Every JSON line the autoscaler printed so far.
    fn events(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn has(&self, event: &str) -> bool {
        self.events().iter().any(|e| e["event"] == event)
    }

    fn transcript(&self) -> String {
        format!(
            "autoscale stdout:\n{}\nautoscale stderr:\n{}",
            std::fs::read_to_string(&self.out).unwrap_or_default(),
            std::fs::read_to_string(&self.err).unwrap_or_default()
        )
    }

    /// Waits until the autoscaler printed `event`.
    fn wait_for(&mut self, event: &str, limit: Duration, cluster: &Cluster) {
        let deadline = Instant::now() + limit;
        while !self.has(event) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the autoscaler exited ({status}) before {event}:\n{}",
                    self.transcript()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no {event} event within {limit:?}:\n{}\n{}",
                self.transcript(),
                cluster.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Scaler {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let started = |e: &&Value| e["event"] == "started" || e["event"] == "node_restarted";
        for e in self.events().iter().filter(started) {
            if let Some(pid) = e["pid"].as_u64() {
                let _ = Command::new("kill")
                    .arg("-KILL")
                    .arg(pid.to_string())
                    .status();
            }
        }
        if std::thread::panicking() {
            eprintln!("{}", self.transcript());
        }
    }
}

/// Starts `kvcli autoscale` with the test's low targets and short timings, plus `extra`.
fn start_autoscaler(seed: &str, dir: &Path, extra: &[String], env: &[(&str, String)]) -> Scaler {
    let out = dir.join("autoscale.out");
    let err = dir.join("autoscale.err");
    let mut cmd = Command::new(kvcli_bin());
    cmd.args(["--node", seed, "--json", "autoscale"])
        .args(["--min", "3", "--max", "4"])
        // Low targets: the bench is far above 30 ops/s per node, our writer far below 10.
        .args(["--target-ops", "30", "--low-ops", "10"])
        .args(["--interval-s", "1", "--cooldown-s", "3", "--window-s", "4"])
        .arg("--dir")
        .arg(dir.join("scaled"))
        .args(extra)
        .env_remove("KV_NODE")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("start kvcli autoscale");
    Scaler {
        child,
        out,
        err,
        pid_dir: None,
    }
}

/// The flags every node the test's autoscaler starts runs with.
fn kvd_args() -> Vec<String> {
    [
        "--kvd-arg=--sync",
        "--kvd-arg=interval",
        "--kvd-arg=--gossip-interval-ms",
        "--kvd-arg=300",
    ]
    .map(String::from)
    .into()
}

/// `kvcli bench` writing as fast as 4 clients can for 15 s.
fn start_bench(seed: &str) -> Child {
    Command::new(kvcli_bin())
        .args(["--node", seed, "--json", "bench", "--workload", "put"])
        .args(["--duration", "15", "--clients", "4", "--records", "1000"])
        .env_remove("KV_NODE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start kvcli bench")
}

/// Sends SIGINT and expects a clean exit, with nothing of its own left running.
fn interrupt(scaler: &mut Scaler) {
    let pid = scaler.child.id();
    let _ = Command::new("kill")
        .arg("-INT")
        .arg(pid.to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = scaler.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "autoscale ignored SIGINT");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status}\n{}", scaler.transcript());
    let exit = scaler
        .events()
        .into_iter()
        .find(|e| e["event"] == "exit")
        .expect("an exit event");
    assert_eq!(exit["running"], json!([]), "{exit}");
}

/// The two tests each load the machine with a cluster and a bench: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Members that have not left, as the node at `url` sees them.
async fn members(url: &str) -> Vec<Value> {
    let mut ws = Ws::connect(url).await;
    let s = ws.request(json!({"op": "status"})).await;
    s["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["state"] != "left")
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_autoscaler_grows_under_load_and_shrinks_back_without_losing_writes() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(3, ClusterOpts::default());
    let seed = cluster.nodes[0].url();
    let mut scaler = start_autoscaler(&seed, cluster.dir(), &kvd_args(), &[]);

    // Our own writer, slow enough to stay under the low watermark on its own; it records
    // every key it got an acknowledgement for.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (url, stop) = (cluster.nodes[1].url(), stop.clone());
        tokio::spawn(async move {
            let mut ws = Ws::connect(&url).await;
            let mut acked = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("acked-{i}");
                let r = ws
                    .request(json!({"op": "put", "key": key, "value": format!("v{i}")}))
                    .await;
                if r["ok"] == true {
                    acked.push(i);
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            acked
        })
    };

    let bench = start_bench(&seed);

    // It grows: a fourth node starts and finishes joining under the load.
    tokio::task::block_in_place(|| scaler.wait_for("joined", Duration::from_secs(60), &cluster));
    let grown = members(&seed).await;
    assert_eq!(grown.len(), 4, "{grown:?}");
    let events = scaler.events();
    let out = events
        .iter()
        .find(|e| e["event"] == "decision" && e["action"] == "scale_out")
        .expect("a scale-out decision");
    assert!(
        out["reason"]
            .as_str()
            .unwrap()
            .contains("above the high watermark"),
        "{out}"
    );
    assert!(
        events.iter().any(|e| e["event"] == "started"),
        "{}",
        scaler.transcript()
    );

    let bench = tokio::task::block_in_place(|| bench.wait_with_output().unwrap());
    let report: Value = serde_json::from_slice(&bench.stdout).unwrap_or(Value::Null);
    assert!(
        report["ops"].as_u64().unwrap_or(0) > 0,
        "bench: {report} {}",
        String::from_utf8_lossy(&bench.stderr)
    );

    // The load stopped: it drains the node it started and stops it.
    tokio::task::block_in_place(|| scaler.wait_for("stopped", Duration::from_secs(60), &cluster));
    let shrunk = members(&seed).await;
    assert_eq!(shrunk.len(), 3, "{shrunk:?}");
    let ids: Vec<&str> = shrunk.iter().map(|n| n["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["n1", "n2", "n3"], "only the node it started left");
    let events = scaler.events();
    let inward = events
        .iter()
        .find(|e| e["event"] == "decision" && e["action"] == "scale_in")
        .expect("a scale-in decision");
    assert!(!inward["reason"].as_str().unwrap().is_empty(), "{inward}");
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "drained" && e["moved_keys"].as_u64().unwrap_or(0) > 0),
        "{}",
        scaler.transcript()
    );

    stop.store(true, Ordering::Relaxed);
    let acked = writer.await.unwrap();
    assert!(acked.len() > 50, "the writer got {} acks", acked.len());

    // Ctrl-C: it stops cleanly, with nothing of its own left running.
    interrupt(&mut scaler);

    // Every acknowledged write survived the join and the decommission.
    let mut ws = Ws::connect(&cluster.nodes[2].url()).await;
    let mut missing = Vec::new();
    for i in &acked {
        let r = ws
            .request(json!({"op": "get", "key": format!("acked-{i}"), "r": 2}))
            .await;
        if r["values"] != json!([format!("v{i}")]) {
            missing.push(format!("acked-{i}: {r}"));
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged writes lost or wrong, e.g. {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );
    let mut log = String::new();
    let _ = std::fs::File::open(&scaler.out).and_then(|mut f| f.read_to_string(&mut log));
    println!(
        "{} acknowledged writes read back; autoscaler printed {} lines",
        acked.len(),
        log.lines().count()
    );
}

/// A stand-in cluster manager: the launch command starts a kvd (id `cm<TARGET>`), the retire
/// command stops the one it names; both log the environment they got.
const LAUNCH: &str = r#"echo "$KV_AUTOSCALE_ACTION count=$KV_AUTOSCALE_COUNT current=$KV_AUTOSCALE_CURRENT target=$KV_AUTOSCALE_TARGET node=$KV_NODE" >> "$SIM/calls"
id="cm$KV_AUTOSCALE_TARGET"
"$KVD" --id "$id" --listen "127.0.0.1:$PORT" --data-dir "$SIM/$id" --seed "$SEED" --sync interval --gossip-interval-ms 300 > "$SIM/$id.log" 2>&1 &
echo $! > "$SIM/$id.pid"
echo "launched $id"
"#;
const RETIRE: &str = r#"echo "$KV_AUTOSCALE_ACTION node=$KV_AUTOSCALE_NODE addr=$KV_AUTOSCALE_NODE_ADDR current=$KV_AUTOSCALE_CURRENT target=$KV_AUTOSCALE_TARGET" >> "$SIM/calls"
kill "$(cat "$SIM/$KV_AUTOSCALE_NODE.pid")"
"#;

/// A node the autoscaler started that crashes (SIGKILL) is started again, as itself: same
/// id, address and data dir, so it is back up holding what it held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_started_node_that_crashes_is_started_again_with_its_data() {
    let _serial = SERIAL.lock().await;
    // Two nodes and --min 3: the autoscaler starts a third.
    let cluster = Cluster::start(2, ClusterOpts::default());
    let seed = cluster.nodes[0].url();
    let mut scaler = start_autoscaler(&seed, cluster.dir(), &kvd_args(), &[]);
    tokio::task::block_in_place(|| scaler.wait_for("joined", Duration::from_secs(60), &cluster));
    let started = scaler
        .events()
        .into_iter()
        .find(|e| e["event"] == "started")
        .unwrap();
    let (id, addr) = (
        started["node"].as_str().unwrap(),
        started["addr"].as_str().unwrap(),
    );
    let pid = started["pid"].as_u64().unwrap();
    // With N = 3 on three nodes every node holds every key.
    let mut ws = Ws::connect(&seed).await;
    let put = ws
        .request(json!({"op": "put", "key": "kept", "value": "through the crash", "w": 3}))
        .await;
    assert_eq!(put["ok"], true, "{put}");

    assert!(Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    tokio::task::block_in_place(|| {
        scaler.wait_for("node_restarted", Duration::from_secs(30), &cluster)
    });
    let events = scaler.events();
    let exited = events.iter().find(|e| e["event"] == "node_exited").unwrap();
    assert_eq!(exited["node"], id, "{exited}");
    let restarted = events
        .iter()
        .find(|e| e["event"] == "node_restarted")
        .unwrap();
    assert_eq!(restarted["node"], id, "{restarted}");
    assert_ne!(restarted["pid"], json!(pid), "{restarted}");

    // Back up, in everyone's view, answering on its address with its data.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let up = members(&seed).await;
        if up.len() == 3 && up.iter().all(|m| m["state"] == "up") {
            break;
        }
        assert!(Instant::now() < deadline, "not all up again: {up:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mut local = Ws::connect(&format!("ws://{addr}")).await;
    let got = local
        .request(json!({"op": "get", "key": "kept", "local": true}))
        .await;
    assert_eq!(got["values"], json!(["through the crash"]), "{got}");
    // (Dropping the scaler stops it and every process it started or started again.)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn launch_and_retire_commands_resize_the_cluster() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(3, ClusterOpts::default());
    let seed = cluster.nodes[0].url();
    let sim = cluster.dir().join("manager");
    std::fs::create_dir_all(&sim).unwrap();
    std::fs::write(sim.join("launch.sh"), LAUNCH).unwrap();
    std::fs::write(sim.join("retire.sh"), RETIRE).unwrap();
    let port = kv_tests::free_port();
    let extra: Vec<String> = vec![
        "--launch".into(),
        format!("sh {}", sim.join("launch.sh").display()),
        "--retire".into(),
        format!("sh {}", sim.join("retire.sh").display()),
    ];
    let env = [
        ("SIM", sim.display().to_string()),
        ("KVD", kv_tests::kvd_bin().display().to_string()),
        ("SEED", cluster.nodes[0].addr.clone()),
        ("PORT", port.to_string()),
    ];
    let mut scaler = start_autoscaler(&seed, cluster.dir(), &extra, &env);
    scaler.pid_dir = Some(sim.clone());

    let bench = start_bench(&seed);
    tokio::task::block_in_place(|| scaler.wait_for("joined", Duration::from_secs(60), &cluster));
    let joined = scaler
        .events()
        .into_iter()
        .find(|e| e["event"] == "joined")
        .unwrap();
    assert_eq!(joined["new"], json!(["cm4"]), "{joined}");
    assert_eq!(members(&seed).await.len(), 4);
    let _ = tokio::task::block_in_place(|| bench.wait_with_output());

    // The node the launch command added counts as the autoscaler's own: it is drained, then
    // the retire command stops it.
    tokio::task::block_in_place(|| scaler.wait_for("retire", Duration::from_secs(60), &cluster));
    let calls = std::fs::read_to_string(sim.join("calls")).unwrap();
    let calls: Vec<&str> = calls.lines().collect();
    assert_eq!(
        calls,
        [
            format!("launch count=1 current=3 target=4 node={seed}"),
            format!("retire node=cm4 addr=127.0.0.1:{port} current=4 target=3"),
        ],
        "{}",
        scaler.transcript()
    );
    let events = scaler.events();
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "drained" && e["node"] == "cm4"),
        "the node was not drained before its retire command:\n{}",
        scaler.transcript()
    );
    let left: Vec<Value> = members(&seed).await;
    assert_eq!(left.len(), 3, "{left:?}");
    // The commands' own output goes to stderr: stdout is JSON lines only.
    let out = std::fs::read_to_string(&scaler.out).unwrap();
    assert!(
        out.lines()
            .all(|l| serde_json::from_str::<Value>(l).is_ok()),
        "{out}"
    );
    assert!(std::fs::read_to_string(&scaler.err)
        .unwrap()
        .contains("launched cm4"));
    interrupt(&mut scaler);
}

//! The kvcli REPL driven like a person at a terminal: a pseudo-terminal (opened with the C
//! library's posix_openpt, so nothing needs installing) runs `kvcli`, the test types lines and
//! keys and reads the screen. Covered: siblings shown with their count and each value,
//! get -> put replacing what was read (and saying so), `put --blind`, `resolve`, help, Tab
//! completion, inline hints, colour (on a terminal, off with NO_COLOR), a usage error that
//! does not end the session, and the history surviving a restart (XDG_DATA_HOME).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kv_tests::{kvcli, kvcli_bin, Cluster, ClusterOpts};
use serde_json::Value;

mod sys {
    use std::os::raw::{c_char, c_int, c_ulong};
    extern "C" {
        pub fn posix_openpt(flags: c_int) -> c_int;
        pub fn grantpt(fd: c_int) -> c_int;
        pub fn unlockpt(fd: c_int) -> c_int;
        pub fn ptsname_r(fd: c_int, buf: *mut c_char, len: usize) -> c_int;
        pub fn ioctl(fd: c_int, request: c_ulong, ...) -> c_int;
    }
    pub const O_RDWR: c_int = 2;
    pub const O_NOCTTY: c_int = 0o400;
    pub const TIOCSWINSZ: c_ulong = 0x5414;
    #[repr(C)]
    pub struct Winsize {
        pub rows: u16,
        pub cols: u16,
        pub xpixel: u16,
        pub ypixel: u16,
    }
}

/// A kvcli process on the slave side of a pseudo-terminal; the test holds the master.
struct Term {
    child: Child,
    master: File,
    screen: Arc<Mutex<Vec<u8>>>,
    /// Output before this offset has been matched already.
    mark: usize,
}

impl Term {
    fn spawn(node: &str, data_home: &Path, no_color: bool) -> Term {
        let (master, slave_path) = unsafe {
            let fd = sys::posix_openpt(sys::O_RDWR | sys::O_NOCTTY);
            assert!(fd >= 0, "posix_openpt failed");
            assert_eq!(sys::grantpt(fd), 0, "grantpt");
            assert_eq!(sys::unlockpt(fd), 0, "unlockpt");
            let mut buf = [0 as std::os::raw::c_char; 128];
            assert_eq!(
                sys::ptsname_r(fd, buf.as_mut_ptr(), buf.len()),
                0,
                "ptsname_r"
            );
            let name = std::ffi::CStr::from_ptr(buf.as_ptr())
                .to_string_lossy()
                .into_owned();
            (File::from(OwnedFd::from_raw_fd(fd)), name)
        };
        let slave = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&slave_path)
            .expect("open the pty slave");
        // A wide screen so hints never wrap.
        let ws = sys::Winsize {
            rows: 50,
            cols: 250,
            xpixel: 0,
            ypixel: 0,
        };
        unsafe {
            use std::os::fd::AsRawFd;
            sys::ioctl(
                slave.as_raw_fd(),
                sys::TIOCSWINSZ,
                &ws as *const sys::Winsize,
            );
        }
        let mut cmd = Command::new(kvcli_bin());
        cmd.args(["--node", node])
            .env_remove("KV_NODE")
            .env_remove("KV_TOKEN")
            .env("XDG_DATA_HOME", data_home)
            .env("TERM", "xterm")
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave));
        if no_color {
            cmd.env("NO_COLOR", "1");
        } else {
            cmd.env_remove("NO_COLOR");
        }
        let child = cmd.spawn().expect("start kvcli on the pty");
        let screen = Arc::new(Mutex::new(Vec::new()));
        let (mut reader, mut answerer) = (master.try_clone().unwrap(), master.try_clone().unwrap());
        let sink = screen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        // Answer cursor-position queries as a terminal would.
                        if buf[..n].windows(4).any(|w| w == b"\x1b[6n") {
                            let _ = answerer.write_all(b"\x1b[1;1R");
                        }
                        sink.lock().unwrap().extend_from_slice(&buf[..n]);
                    }
                }
            }
        });
        Term {
            child,
            master,
            screen,
            mark: 0,
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.screen.lock().unwrap()).into_owned()
    }

    /// Waits until `what` appears after the mark; moves the mark past it and returns the
    /// screen output from the old mark to the end of the match.
    fn expect(&mut self, what: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let bytes = self.screen.lock().unwrap().clone();
            let from = self.mark.min(bytes.len());
            if let Some(i) = find(&bytes[from..], what.as_bytes()) {
                let end = from + i + what.len();
                self.mark = end;
                return String::from_utf8_lossy(&bytes[from..end]).into_owned();
            }
            assert!(
                Instant::now() < deadline,
                "the screen never showed {what:?}; after the mark it shows:\n{}",
                String::from_utf8_lossy(&bytes[from..])
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Types `keys` as they are (no Enter).
    fn keys(&mut self, keys: &str) {
        self.master.write_all(keys.as_bytes()).unwrap();
        self.master.flush().unwrap();
    }

    /// Types a line and Enter, then waits for the next prompt; returns what was shown.
    fn run(&mut self, line: &str) -> String {
        self.mark = self.screen.lock().unwrap().len();
        self.keys(line);
        self.keys("\r");
        // The line editor leaves raw mode (and bracketed paste) when a line is accepted; the
        // command's output follows, up to the next prompt.
        let mut shown = self.expect("\x1b[?2004l");
        shown.push_str(&self.expect("kv> "));
        shown
    }

    fn wait_exit(&mut self) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < deadline,
                "kvcli did not exit:\n{}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Term {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn get_json(node: &str, key: &str) -> Value {
    let (code, out, err) = kvcli(&["--node", node, "--json", "get", key]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(out.trim()).unwrap()
}

fn sorted_values(v: &Value) -> Vec<String> {
    let mut vals: Vec<String> = v["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect();
    vals.sort();
    vals
}

#[test]
fn repl_siblings_contexts_completion_and_history() {
    let mut cluster = Cluster::start(1, ClusterOpts::one_replica());
    let node = cluster.nodes[0].url();
    let home = tempfile::tempdir().unwrap();
    // Two blind writes: two siblings.
    for v in ["one", "two"] {
        assert_eq!(kvcli(&["--node", &node, "put", "k", v]).0, 0);
    }

    let mut t = Term::spawn(&node, home.path(), true);
    t.expect("kv> ");

    let shown = t.run("get k");
    assert!(shown.contains("2 siblings"), "{shown}");
    assert!(
        shown.contains("1) one") && shown.contains("2) two"),
        "{shown}"
    );

    // get -> edit -> put replaces what was read, and says so.
    let shown = t.run("put k \"edited value\"");
    assert!(
        shown.contains("with the context of your last get of k"),
        "{shown}"
    );
    assert!(shown.contains("replaces the 2 siblings"), "{shown}");
    assert_eq!(sorted_values(&get_json(&node, "k")), ["edited value"]);

    // A rival blind write from elsewhere, then resolve: one value again.
    assert_eq!(kvcli(&["--node", &node, "put", "k", "rival"]).0, 0);
    let shown = t.run("get k");
    assert!(shown.contains("2 siblings"), "{shown}");
    let shown = t.run("resolve k final");
    assert!(shown.contains("replaced 2 siblings of k"), "{shown}");
    assert_eq!(sorted_values(&get_json(&node, "k")), ["final"]);

    // --blind keeps what is stored.
    let shown = t.run("put k kept --blind");
    assert!(!shown.contains("context of your last"), "{shown}");
    assert_eq!(sorted_values(&get_json(&node, "k")), ["final", "kept"]);

    // Help.
    let shown = t.run("help");
    assert!(
        shown.contains("resolve") && shown.contains("bench"),
        "{shown}"
    );
    let shown = t.run("help resolve");
    assert!(shown.contains("--w"), "{shown}");

    // A usage error is one line and the session goes on.
    let shown = t.run("frobnicate now");
    assert!(
        shown.contains("unrecognized subcommand 'frobnicate'"),
        "{shown}"
    );
    let shown = t.run("put onlykey");
    assert!(shown.contains("<VALUE>"), "{shown}");

    // Tab completes a command; an inline hint shows the arguments left to type.
    t.keys("reso\t");
    t.expect("resolve ");
    t.keys("k2 ");
    t.expect("VALUE [--w W]");
    t.keys("v2\r");
    t.expect("replaced no live value of k2");
    t.expect("kv> ");
    assert_eq!(sorted_values(&get_json(&node, "k2")), ["v2"]);
    // Keys used in the session complete too.
    t.keys("get k2\x15"); // type, then Ctrl-U clears the line
    t.keys("delete k\t");
    t.expect("\x07"); // k and k2 both match: the terminal bell, then the list on a second Tab
    t.keys("\t");
    t.expect("k2");
    t.keys("\x15");

    // A long bench shows a progress bar on the terminal; Ctrl-C (SIGINT) stops it early with
    // the report of what it did, and the session goes on.
    t.mark = t.screen.lock().unwrap().len();
    t.keys("bench --workload put --records 10 --clients 1 --duration 60\r");
    t.expect("ops/s");
    let pid = t.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    t.expect("bench interrupted after");
    t.expect("throughput:");
    t.expect("kv> ");
    let shown = t.run("get k2");
    assert!(shown.contains("v2"), "{shown}");

    // The node restarts under the session: the next command reconnects (and says so).
    assert_eq!(cluster.stop(0), Some(0));
    cluster.restart(0);
    let shown = t.run("get k2");
    assert!(shown.contains("reconnected to"), "{shown}");
    assert!(shown.contains("v2"), "{shown}");
    t.keys("quit\r");
    assert_eq!(t.wait_exit(), 0);

    let history = std::fs::read_to_string(home.path().join("kvcli/history")).unwrap();
    assert!(history.contains("resolve k final"), "{history}");
    assert!(history.contains("get k2"), "{history}");

    // A new session: the history is back (Up, Up reaches `get k2`), and with colours on.
    let mut t = Term::spawn(&node, home.path(), false);
    t.expect("kv> ");
    t.keys("\x1b[A");
    t.expect("quit");
    t.keys("\x1b[A");
    t.expect("get k2");
    t.keys("\r");
    t.expect("v2");
    t.expect("kv> ");
    let shown = t.run("get k");
    assert!(
        shown.contains("\x1b[33m2 siblings"),
        "siblings in colour on a terminal: {shown:?}"
    );
    t.keys("\x04"); // Ctrl-D leaves
    assert_eq!(t.wait_exit(), 0);
}

/// Script mode (standard input not a terminal) with --json: one document per line for every
/// command, in order, no colour, and the session goes on after a failure.
#[test]
fn script_mode_json_for_every_command() {
    let cluster = Cluster::start(3, ClusterOpts::default());
    let node = cluster.nodes[0].url();
    for v in ["x", "y"] {
        assert_eq!(kvcli(&["--node", &node, "put", "s", v]).0, 0);
    }
    let script = "\
get s
resolve s merged
get s
delete s --blind
status --sample 0.2
ring
ring --key s
metrics
metrics n2
metrics --all
put s
get s
";
    let (code, out, err) = kv_tests::kvcli_with_stdin(&["--node", &node, "--json"], Some(script));
    assert_eq!(code, 2, "the usage error of `put s` sets the status: {err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("<VALUE>"), "{err}");
    assert!(!out.contains('\x1b'), "no colour when piped");
    let docs: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(docs.len(), 11, "{out}");

    assert_eq!(
        docs[0]["values"].as_array().unwrap().len(),
        2,
        "{}",
        docs[0]
    );
    assert_eq!(docs[1]["ok"], true);
    assert_eq!(docs[1]["replaced"], 2, "{}", docs[1]);
    assert!(docs[1]["context"].as_str().is_some_and(|c| !c.is_empty()));
    assert_eq!(docs[2]["values"], serde_json::json!(["merged"]));
    assert_eq!(docs[3]["ok"], true);

    let nodes = docs[4]["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    for n in nodes {
        for f in [
            "id",
            "addr",
            "dc",
            "rack",
            "state",
            "keys",
            "hints_pending",
            "disk_bytes",
            "uptime_s",
        ] {
            assert!(n.get(f).is_some(), "status lacks {f}: {n}");
        }
        // Each node looks its file system up: it has room.
        assert!(n["disk_free_bytes"].as_u64() > Some(0), "{n}");
        assert!(n["ops_per_sec"].as_f64().is_some(), "ops/s measured: {n}");
    }

    let ring = docs[5]["nodes"].as_array().unwrap();
    let owned: f64 = ring.iter().map(|n| n["ownership"].as_f64().unwrap()).sum();
    assert!(
        (owned - 3.0).abs() < 0.01,
        "3 replicas: ownership sums to 3: {}",
        docs[5]
    );
    assert_eq!(docs[6]["preference_list"].as_array().unwrap().len(), 3);

    // metrics: this node's requests, latency estimated from the buckets, storage figures.
    let m = &docs[7];
    assert!(m["ops"]["get"]["requests"].as_u64().unwrap() >= 2, "{m}");
    assert!(m["ops"]["put"]["requests"].as_u64().unwrap() >= 1, "{m}");
    let l = &m["ops"]["get"]["latency_us"];
    assert!(
        l["p50"].as_u64().unwrap() <= l["p99"].as_u64().unwrap(),
        "{m}"
    );
    assert!(m["storage"]["keys"].as_u64().is_some(), "{m}");
    assert!(m["members"]["up"].as_u64() == Some(3), "{m}");
    // Every form names the node the same way: its id, and its address apart.
    assert_eq!(docs[7]["node"], "n1", "{}", docs[7]);
    assert_eq!(docs[8]["node"], "n2", "{}", docs[8]);
    assert!(
        docs[8]["addr"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:")),
        "{}",
        docs[8]
    );
    let all = docs[9]["nodes"].as_array().unwrap();
    assert_eq!(all.len(), 3);
    let mut ids: Vec<&str> = all.iter().map(|d| d["node"].as_str().unwrap()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["n1", "n2", "n3"]);

    // After the failed line the script went on. The delete had no context (script mode keeps
    // none, and --blind ignores the REPL's): the node read the key and deleted what it found.
    assert_eq!(docs[10]["found"], false, "{}", docs[10]);
    assert_eq!(docs[10]["values"], serde_json::json!([]), "{}", docs[10]);

    // A member id that does not exist is a usage error.
    let (code, _, err) = kvcli(&["--node", &node, "metrics", "nosuch"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no member named nosuch"), "{err}");
}

/// Each failure is one line on stderr naming what failed, with the documented exit status:
/// a refused token (3), a quorum not met naming the replicas that failed (1), in one-shot use
/// and in script mode alike.
#[test]
fn errors_name_what_failed() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "s3cret\n").unwrap();
    let mut cluster = Cluster::start(
        3,
        ClusterOpts {
            extra: vec![
                "--gossip-interval-ms".into(),
                "300".into(),
                "--token-file".into(),
                tokens.display().to_string(),
            ],
            ..ClusterOpts::default()
        },
    );
    let node = cluster.nodes[0].url();

    let (code, _, err) = kvcli(&["--node", &node, "get", "k"]);
    assert_eq!(code, 3, "no token: {err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("unauthorized"), "{err}");
    let (code, _, err) = kvcli(&["--node", &node, "--token", "wrong", "get", "k"]);
    assert_eq!(code, 3, "{err}");
    let (code, _, err) = kvcli(&["--node", &node, "--token", "s3cret", "put", "k", "v"]);
    assert_eq!(code, 0, "{err}");

    // Two of three replicas gone: W=2 cannot be met, and the error says which failed.
    cluster.kill(1);
    cluster.kill(2);
    let (code, _, err) = kvcli(&[
        "--node",
        &node,
        "--token",
        "s3cret",
        "--timeout",
        "5",
        "put",
        "k",
        "v2",
    ]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("quorum not met"), "{err}");
    assert!(
        err.contains("n2") && err.contains("n3"),
        "names the replicas: {err}"
    );

    // Script mode: the same line for the failed command, the next command still runs.
    let (code, out, err) = kv_tests::kvcli_with_stdin(
        &["--node", &node, "--token", "s3cret", "--json"],
        Some("get k --r 3\nget k --r 1\n"),
    );
    assert_eq!(code, 1, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("R=3"), "{err}");
    let doc: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(doc["found"], true, "{doc}");
}

//! Fault injection for process-level tests: a cluster of real `kvd` processes, each in a Linux
//! network namespace of its own, on which a test can SIGKILL and restart nodes, hang them
//! (SIGSTOP / SIGCONT), cut the network between chosen groups of nodes, and slow a node's link.
//!
//! Why network namespaces rather than a fault layer inside kvd: the daemon under test stays
//! the binary users run (no test-only code path in its transport), and the faults are the real
//! thing — dropped packets, hanging TCP connections, a rate-limited link — seen by the kernel's
//! TCP stack on both sides.
//!
//! Topology of one [`Net`] (all names and the /24 subnet are unique per run, so tests run in
//! parallel under nextest):
//!
//! ```text
//!   root namespace (the test, its clients, kvcli)   10.A.B.254 on kvf<id>h
//!        |  veth
//!   kvf<id>p<pid>b : bridge br0 ---- veth v<i> ---- kvf<id>p<pid>n<i> : eth0 10.A.B.<i+1>
//! ```
//!
//! Partitions are iptables DROP rules inside the node namespaces (the client path from the root
//! namespace is never cut: clients see a cluster whose nodes cannot reach each other); slow
//! links are `tc tbf` rate limits on both ends of a node's veth (`netem` is not available).
//! Everything is removed on drop, also when the test panics; namespaces left by a test process
//! that was killed are swept by the next run (their names carry the pid that owned them).
//!
//! Needs root, `ip` (iproute2), `iptables` and `tc`. Without them [`Net::create`] panics with
//! what is missing: a fault test must fail, never pass without injecting anything.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{http_get, kvd_bin, ClusterOpts};

/// The port every node listens on inside its own namespace (each node has its own address).
pub const NODE_PORT: u16 = 7070;

/// A deterministic pseudo-random generator (SplitMix64): a fault schedule is reproduced from
/// the seed a test prints.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// A seed from the environment variable `var` if set (to replay a run), else from the
    /// clock and the process id.
    pub fn seed_from_env(var: &str) -> u64 {
        match std::env::var(var).ok().and_then(|s| s.trim().parse().ok()) {
            Some(s) => s,
            None => Rng::fresh_seed(),
        }
    }

    /// A seed from the clock and the process id.
    pub fn fresh_seed() -> u64 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let mut r = Rng(nanos ^ (u64::from(std::process::id()) << 32));
        r.next_u64()
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// A number in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

/// Runs a command; on failure, the command line, its status and its stderr.
fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `{program} {}`: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Runs a command that sets up or changes the network; a failure ends the test.
fn must(program: &str, args: &[&str]) {
    if let Err(e) = run(program, args) {
        panic!("fault injection: {e}");
    }
}

/// Runs a command with `input` on its standard input.
fn run_with_input(program: &str, args: &[&str], input: &str) -> Result<(), String> {
    use std::io::Write;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run `{program} {}`: {e}", args.join(" ")))?;
    if let Some(mut si) = child.stdin.take() {
        si.write_all(input.as_bytes())
            .map_err(|e| format!("writing to `{program}`: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting for `{program}`: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Panics with a clear message unless this process can create network namespaces and run
/// iptables and tc in them (root, iproute2, iptables, tc).
pub fn require_netns() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "fault-injection tests need root to create network namespaces (running as uid {euid}); \
         CI runs them as root"
    );
    if let Err(e) = run("ip", &["netns", "list"]) {
        panic!("fault-injection tests need `ip netns` (iproute2): {e}");
    }
    if let Err(e) = run("iptables", &["--version"]) {
        panic!(
            "fault-injection tests need iptables for partitions: {e}; \
             `apt-get install -y iptables` (tests/run-all.sh does)"
        );
    }
    if let Err(e) = run("tc", &["-V"]) {
        panic!("fault-injection tests need tc (iproute2) for slow links: {e}");
    }
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Deletes namespace `ns` after SIGKILLing every process still in it.
fn remove_namespace(ns: &str) {
    if let Ok(pids) = run("ip", &["netns", "pids", ns]) {
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            // SAFETY: kill with a pid read from the namespace and a valid signal number.
            unsafe {
                libc::kill(pid, libc::SIGCONT);
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
    let _ = run("ip", &["netns", "delete", ns]);
}

/// Removes the namespaces of earlier test processes that died without cleaning up (killed by
/// a timeout, say): their names carry the owner's pid, and the owner is gone.
fn sweep_stale() {
    let Ok(list) = run("ip", &["netns", "list"]) else {
        return;
    };
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(rest) = name.strip_prefix("kvf") else {
            continue;
        };
        let owner = rest
            .split_once('p')
            .map(|(_, after)| {
                after
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect::<String>()
            })
            .and_then(|d| d.parse::<u32>().ok());
        if let Some(pid) = owner {
            if !pid_alive(pid) {
                remove_namespace(name);
            }
        }
    }
}

/// The namespaces, bridge and addresses of one test's nodes, torn down on drop.
pub struct Net {
    /// Run id: names the root-namespace veth (`kvf<id>h`) and picks the subnet.
    id: u32,
    /// First three octets of the subnet, e.g. `10.201.7`.
    prefix: String,
    /// The namespace holding the bridge.
    bridge_ns: String,
    /// One namespace per node.
    node_ns: Vec<String>,
    /// The root-namespace end of the veth to the bridge.
    host_link: String,
    /// Nodes whose links are rate-limited now.
    slowed: Vec<bool>,
    /// Whether partition rules are installed now.
    partitioned: bool,
}

impl Net {
    /// Creates namespaces for `nodes` nodes on a bridge, reachable from this process.
    ///
    /// Panics (with the failing command and its error) when the machine does not allow it.
    pub fn create(nodes: usize) -> Net {
        assert!(nodes > 0 && nodes < 250, "1 to 249 nodes per network");
        require_netns();
        sweep_stale();
        let pid = std::process::id();
        let mut rng = Rng::new(Rng::fresh_seed());
        let used = run("ip", &["-4", "addr"]).unwrap_or_default();
        for _ in 0..64 {
            // 10.192.0.0/10: 16384 possible /24 subnets.
            let id = rng.below(16384) as u32;
            let prefix = format!("10.{}.{}", 192 + id / 256, id % 256);
            if used.contains(&format!("{prefix}.")) {
                continue;
            }
            let bridge_ns = format!("kvf{id}p{pid}b");
            let host_link = format!("kvf{id}h");
            must("ip", &["netns", "add", &bridge_ns]);
            // Creating the root-namespace link is atomic: it fails if another run holds this
            // id (and so this subnet), and this one picks another.
            let made = run(
                "ip",
                &[
                    "link", "add", &host_link, "type", "veth", "peer", "name", "host", "netns",
                    &bridge_ns,
                ],
            );
            if made.is_err() {
                let _ = run("ip", &["netns", "delete", &bridge_ns]);
                continue;
            }
            let mut net = Net {
                id,
                prefix,
                bridge_ns,
                node_ns: Vec::new(),
                host_link,
                slowed: vec![false; nodes],
                partitioned: false,
            };
            net.build(nodes, pid);
            return net;
        }
        panic!("fault injection: no free subnet in 10.192.0.0/10 after 64 tries");
    }

    fn build(&mut self, nodes: usize, pid: u32) {
        let br = self.bridge_ns.clone();
        must("ip", &["-n", &br, "link", "add", "br0", "type", "bridge"]);
        must("ip", &["-n", &br, "link", "set", "br0", "up"]);
        must("ip", &["-n", &br, "link", "set", "host", "master", "br0"]);
        must("ip", &["-n", &br, "link", "set", "host", "up"]);
        let host_addr = format!("{}.254/24", self.prefix);
        must(
            "ip",
            &["addr", "add", &host_addr, "dev", self.host_link.as_str()],
        );
        must("ip", &["link", "set", self.host_link.as_str(), "up"]);
        for i in 0..nodes {
            let ns = format!("kvf{}p{pid}n{i}", self.id);
            must("ip", &["netns", "add", &ns]);
            self.node_ns.push(ns.clone());
            let v = format!("v{i}");
            must(
                "ip",
                &[
                    "-n", &br, "link", "add", &v, "type", "veth", "peer", "name", "eth0", "netns",
                    &ns,
                ],
            );
            must("ip", &["-n", &br, "link", "set", &v, "master", "br0"]);
            must("ip", &["-n", &br, "link", "set", &v, "up"]);
            let addr = format!("{}/24", self.ip(i));
            must("ip", &["-n", &ns, "addr", "add", &addr, "dev", "eth0"]);
            must("ip", &["-n", &ns, "link", "set", "eth0", "up"]);
            must("ip", &["-n", &ns, "link", "set", "lo", "up"]);
        }
    }

    /// Node `i`'s address (`10.A.B.<i+1>`).
    pub fn ip(&self, i: usize) -> String {
        format!("{}.{}", self.prefix, i + 1)
    }

    /// Node `i`'s namespace.
    pub fn ns(&self, i: usize) -> &str {
        &self.node_ns[i]
    }

    /// The subnet, e.g. `10.201.7.0/24`.
    pub fn subnet(&self) -> String {
        format!("{}.0/24", self.prefix)
    }

    /// Cuts the network between groups: a node can reach only the nodes of its own group
    /// (packets to and from the others are dropped, so their TCP connections hang). Nodes in
    /// no group keep reaching everyone. Replaces any earlier partition.
    pub fn partition(&mut self, groups: &[Vec<usize>]) {
        let group_of = |i: usize| groups.iter().position(|g| g.contains(&i));
        for i in 0..self.node_ns.len() {
            let mut rules = String::new();
            for j in 0..self.node_ns.len() {
                let cut = match (group_of(i), group_of(j)) {
                    (Some(a), Some(b)) => a != b,
                    _ => false,
                };
                if cut {
                    let ip = self.ip(j);
                    rules.push_str(&format!("-A INPUT -s {ip} -j DROP\n"));
                    rules.push_str(&format!("-A OUTPUT -d {ip} -j DROP\n"));
                }
            }
            self.load_rules(i, &rules);
        }
        self.partitioned = true;
    }

    /// Removes every partition rule.
    pub fn heal_partition(&mut self) {
        for i in 0..self.node_ns.len() {
            self.load_rules(i, "");
        }
        self.partitioned = false;
    }

    /// Replaces the filter table of node `i`'s namespace with `rules` (one atomic
    /// iptables-restore).
    fn load_rules(&self, i: usize, rules: &str) {
        let table = format!(
            "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n{rules}COMMIT\n"
        );
        if let Err(e) = run_with_input(
            "ip",
            &["netns", "exec", self.ns(i), "iptables-restore", "-w"],
            &table,
        ) {
            panic!("fault injection: partition rules for node {i}: {e}");
        }
    }

    /// Rate-limits node `i`'s link to `kbit` kbit/s in both directions (tc tbf on both ends of
    /// its veth; a full queue also delays packets by up to a second).
    pub fn slow(&mut self, i: usize, kbit: u32) {
        let rate = format!("{kbit}kbit");
        let tbf = [
            "root", "tbf", "rate", &rate, "burst", "16kb", "latency", "1s",
        ];
        let ns = self.node_ns[i].clone();
        let mut a = vec![
            "netns", "exec", &ns, "tc", "qdisc", "replace", "dev", "eth0",
        ];
        a.extend(tbf);
        must("ip", &a);
        let v = format!("v{i}");
        let br = self.bridge_ns.clone();
        let mut b = vec!["netns", "exec", &br, "tc", "qdisc", "replace", "dev", &v];
        b.extend(tbf);
        must("ip", &b);
        self.slowed[i] = true;
    }

    /// Removes node `i`'s rate limit.
    pub fn unslow(&mut self, i: usize) {
        let ns = self.node_ns[i].clone();
        let _ = run(
            "ip",
            &[
                "netns", "exec", &ns, "tc", "qdisc", "del", "dev", "eth0", "root",
            ],
        );
        let v = format!("v{i}");
        let br = self.bridge_ns.clone();
        let _ = run(
            "ip",
            &[
                "netns", "exec", &br, "tc", "qdisc", "del", "dev", &v, "root",
            ],
        );
        self.slowed[i] = false;
    }

    /// Removes every partition and rate limit.
    pub fn heal_all(&mut self) {
        if self.partitioned {
            self.heal_partition();
        }
        for i in 0..self.slowed.len() {
            if self.slowed[i] {
                self.unslow(i);
            }
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in &self.node_ns {
            remove_namespace(ns);
        }
        remove_namespace(&self.bridge_ns);
        // Deleting the bridge namespace removes its veth ends, and with them their peers, but
        // asynchronously: delete the root-namespace end now so the name is free at once.
        let _ = run("ip", &["link", "delete", &self.host_link]);
    }
}

/// One node of a [`FaultCluster`].
pub struct FaultNode {
    /// Node id (`n1`, `n2`, ...).
    pub id: String,
    /// `10.A.B.<i+1>:7070`.
    pub addr: String,
    /// The node's data dir.
    pub data_dir: PathBuf,
    /// Its log file (stderr of every life of the process, appended).
    pub log: PathBuf,
    /// kvd's flags.
    args: Vec<String>,
    /// The running process (kvd itself: `ip netns exec` execs it).
    child: Option<Child>,
    /// SIGSTOPped now.
    paused: bool,
}

impl FaultNode {
    /// `ws://ADDR`.
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }
}

/// What happened to the cluster, for the test's report.
#[derive(Clone, Debug, Default)]
pub struct FaultCounts {
    /// SIGKILLs.
    pub kills: u64,
    /// Restarts (each one reached `/health`).
    pub restarts: u64,
    /// SIGSTOP / SIGCONT pairs.
    pub pauses: u64,
    /// Partitions installed.
    pub partitions: u64,
    /// Links slowed.
    pub slow_links: u64,
}

impl FaultCounts {
    /// Every fault injected (a restart is the end of a kill, not a fault of its own).
    pub fn total(&self) -> u64 {
        self.kills + self.pauses + self.partitions + self.slow_links
    }
}

/// A cluster of real kvd processes, one per network namespace, with faults on demand. Every
/// process and namespace is removed on drop.
pub struct FaultCluster {
    /// The nodes, in start order.
    pub nodes: Vec<FaultNode>,
    /// Settings the nodes run with.
    pub opts: ClusterOpts,
    /// Faults injected so far.
    pub counts: FaultCounts,
    /// Declared after `nodes` so the processes are gone before their namespaces.
    net: Net,
    dir: tempfile::TempDir,
}

impl FaultCluster {
    /// Starts `k` nodes, each in its namespace (the first is the others' seed), and waits until
    /// every node sees every other up and in its ring.
    pub fn start(k: usize, opts: ClusterOpts) -> FaultCluster {
        let net = Net::create(k);
        let dir = tempfile::tempdir().expect("temp dir");
        let mut c = FaultCluster {
            nodes: Vec::new(),
            opts,
            counts: FaultCounts::default(),
            net,
            dir,
        };
        for i in 0..k {
            c.add_node(i);
        }
        c.wait_converged(Duration::from_secs(60));
        c
    }

    fn add_node(&mut self, i: usize) {
        let id = format!("n{}", i + 1);
        let addr = format!("{}:{NODE_PORT}", self.net.ip(i));
        let data_dir = self.dir.path().join(&id);
        let log = self.dir.path().join(format!("{id}.log"));
        let mut args = self.opts.node_args(&id, &addr, &data_dir);
        if i > 0 {
            args.push("--seed".into());
            args.push(self.nodes[0].addr.clone());
        }
        args.extend(self.opts.extra.iter().cloned());
        self.nodes.push(FaultNode {
            id,
            addr,
            data_dir,
            log,
            args,
            child: None,
            paused: false,
        });
        self.spawn(i);
        // Joins are serialized: the next node picks its tokens knowing this one's.
        let seed = self.nodes[0].addr.clone();
        let expected = self.nodes.len() as u64;
        let deadline = Instant::now() + Duration::from_secs(30);
        let in_ring = || health(&seed).is_some_and(|v| v["ring_nodes"].as_u64() == Some(expected));
        while !in_ring() {
            assert!(
                Instant::now() < deadline,
                "node {} never entered the ring:\n{}",
                i + 1,
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts node `i`'s process in its namespace and waits for `/health`.
    fn spawn(&mut self, i: usize) {
        self.spawn_process(i);
        self.wait_up(i, Duration::from_secs(30));
    }

    /// Starts node `i`'s process in its namespace.
    fn spawn_process(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .expect("open node log");
        let kvd = kvd_bin();
        let child = Command::new("ip")
            .args(["netns", "exec", self.net.ns(i)])
            .arg(&kvd)
            .args(&node.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start ip netns exec kvd");
        node.child = Some(child);
        node.paused = false;
    }

    /// Waits until node `i` answers `/health`; panics with its log if it exits or does not
    /// answer within `limit`.
    fn wait_up(&mut self, i: usize, limit: Duration) {
        let node = &mut self.nodes[i];
        let Some(pid) = node.child.as_ref().map(Child::id) else {
            panic!("{} is not running", node.id);
        };
        let deadline = Instant::now() + limit;
        while health(&node.addr).is_none() {
            if let Some(Ok(Some(status))) = node.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "{} exited ({status}) while starting; log:\n{}",
                    node.id,
                    std::fs::read_to_string(&node.log).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} did not answer /health within {limit:?}; log:\n{}",
                node.id,
                std::fs::read_to_string(&node.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // `ip netns exec` execs the command, so the child's pid is kvd's own: a SIGKILL kills
        // the node, not a wrapper that would leave it running.
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
        let name = exe
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        assert!(
            name.starts_with("kvd"),
            "pid {pid} of {} runs {} rather than kvd",
            node.id,
            exe.display()
        );
    }

    /// The directory holding the nodes' data dirs and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The network (for partitions and slow links).
    pub fn net(&mut self) -> &mut Net {
        &mut self.net
    }

    /// Every node's `ws://` URL.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(FaultNode::url).collect()
    }

    /// Whether node `i`'s process is running (paused counts as running).
    pub fn is_running(&mut self, i: usize) -> bool {
        matches!(
            self.nodes[i].child.as_mut().map(|c| c.try_wait()),
            Some(Ok(None))
        )
    }

    /// The process id of node `i`, if it was started and not killed.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].child.as_ref().map(Child::id)
    }

    /// SIGKILLs node `i` (no shutdown of any kind) and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            signal(c.id(), libc::SIGKILL);
            let _ = c.wait();
            self.nodes[i].paused = false;
            self.counts.kills += 1;
        }
    }

    /// Starts node `i` again with the same flags and data dir; panics if it does not come up
    /// (a restart that fails is a finding, with the node's log in the message).
    pub fn restart(&mut self, i: usize) {
        assert!(self.nodes[i].child.is_none(), "node {i} is still running");
        self.spawn(i);
        self.counts.restarts += 1;
    }

    /// Starts node `i` again like [`restart`](Self::restart) but returns at once, without
    /// waiting for it to serve; [`finish_restart`](Self::finish_restart) waits.
    pub fn begin_restart(&mut self, i: usize) {
        assert!(self.nodes[i].child.is_none(), "node {i} is still running");
        self.spawn_process(i);
    }

    /// Waits until a node started by [`begin_restart`](Self::begin_restart) serves.
    pub fn finish_restart(&mut self, i: usize) {
        self.wait_up(i, Duration::from_secs(30));
        self.counts.restarts += 1;
    }

    /// SIGSTOPs node `i`: a hung node whose sockets stay open.
    pub fn pause(&mut self, i: usize) {
        if let Some(pid) = self.pid(i) {
            if !self.nodes[i].paused {
                signal(pid, libc::SIGSTOP);
                wait_stopped(pid);
                self.nodes[i].paused = true;
                self.counts.pauses += 1;
            }
        }
    }

    /// SIGCONTs node `i`.
    pub fn resume(&mut self, i: usize) {
        if let Some(pid) = self.pid(i) {
            signal(pid, libc::SIGCONT);
        }
        self.nodes[i].paused = false;
    }

    /// Cuts the network between `groups` of node indexes (see [`Net::partition`]).
    pub fn partition(&mut self, groups: &[Vec<usize>]) {
        self.net.partition(groups);
        self.counts.partitions += 1;
    }

    /// Removes every partition.
    pub fn heal_partition(&mut self) {
        self.net.heal_partition();
    }

    /// Rate-limits node `i`'s link to `kbit` kbit/s.
    pub fn slow(&mut self, i: usize, kbit: u32) {
        self.net.slow(i, kbit);
        self.counts.slow_links += 1;
    }

    /// Removes node `i`'s rate limit.
    pub fn unslow(&mut self, i: usize) {
        self.net.unslow(i);
    }

    /// Ends every fault: network healed, paused nodes resumed, killed nodes restarted.
    pub fn heal_all(&mut self) {
        self.net.heal_all();
        for i in 0..self.nodes.len() {
            if self.nodes[i].paused {
                self.resume(i);
            }
            if !self.is_running(i) {
                let _ = self.nodes[i].child.take().map(|mut c| c.wait());
                self.restart(i);
            }
        }
    }

    /// Waits until every node reports every node up and in its ring.
    pub fn wait_converged(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        let k = self.nodes.len() as u64;
        loop {
            let all = self.nodes.iter().all(|n| {
                health(&n.addr).is_some_and(|v| {
                    v["members_up"].as_u64() == Some(k) && v["ring_nodes"].as_u64() == Some(k)
                })
            });
            if all {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "cluster did not converge within {limit:?}:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The tail of every node's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            crate::push_log_tail(&mut out, &n.id, &n.addr, &n.log, 40);
        }
        out
    }
}

impl Drop for FaultCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                signal(c.id(), libc::SIGCONT);
                signal(c.id(), libc::SIGKILL);
                let _ = c.wait();
            }
        }
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
            // Keep the logs and data dirs of a failed run for a post-mortem.
            let kept = std::env::temp_dir().join(format!(
                "kv-fault-{}-{}",
                std::process::id(),
                self.net.id
            ));
            if std::fs::rename(self.dir.path(), &kept).is_ok() {
                eprintln!("node logs and data dirs kept in {}", kept.display());
            }
        }
    }
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill with the pid of a child this process started and has not reaped.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

/// `GET /health` as JSON, if the node answers.
fn health(addr: &str) -> Option<Value> {
    http_get(addr, "/health").and_then(|b| serde_json::from_str(&b).ok())
}

/// Waits (up to 2 s) until every thread of `pid` is stopped: a signal is delivered
/// asynchronously, and a thread still running could answer one more request.
pub fn wait_stopped(pid: u32) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while std::time::Instant::now() < deadline {
        let all_stopped = std::fs::read_dir(format!("/proc/{pid}/task"))
            .map(|tasks| {
                tasks.flatten().all(|t| {
                    std::fs::read_to_string(t.path().join("stat"))
                        .ok()
                        .and_then(|stat| {
                            // The state follows the command name, which is in parentheses.
                            stat.rsplit_once(')')
                                .and_then(|(_, rest)| rest.trim_start().chars().next())
                        })
                        .is_some_and(|state| state == 'T' || state == 't')
                })
            })
            .unwrap_or(true);
        if all_stopped {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

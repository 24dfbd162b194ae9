//! Helpers for the workspace-level tests: start real `kvd` processes on 127.0.0.1 with ports
//! picked at run time, talk to them over WebSockets and HTTP like a user, and stop every
//! process when the test ends, also when it fails (the cluster kills its nodes on drop).

pub mod checker;
pub mod faults;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// The directory holding the built binaries (`target/debug`), found from the test executable
/// (`target/debug/deps/<test>`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test knows its own path");
    let deps = exe
        .parent()
        .expect("the test runs from target/<profile>/deps");
    deps.parent().expect("deps has a parent").to_path_buf()
}

/// Path of the `kvd` binary; the test command builds it before running the tests.
pub fn kvd_bin() -> PathBuf {
    let p = bin_dir().join("kvd");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build -p kvd -p kvcli` first (tests/run-all.sh does)",
        p.display()
    );
    p
}

/// Path of the `kvcli` binary.
pub fn kvcli_bin() -> PathBuf {
    let p = bin_dir().join("kvcli");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build -p kvd -p kvcli` first",
        p.display()
    );
    p
}

/// Threads of process `pid` named as the async runtime's workers (`tokio-rt-worker`); 0 when
/// the process is gone.
pub fn runtime_workers(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                .filter(|comm| comm.trim() == "tokio-rt-worker")
                .count()
        })
        .unwrap_or(0)
}

/// A free TCP port on 127.0.0.1 (bound, read, released).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// Settings of a test cluster.
#[derive(Clone, Debug)]
pub struct ClusterOpts {
    /// Replicas per key.
    pub n: usize,
    /// Default write quorum.
    pub w: usize,
    /// Default read quorum.
    pub r: usize,
    /// `--sync` of every node.
    pub sync: &'static str,
    /// Extra flags for every node.
    pub extra: Vec<String>,
    /// `--dc` of node i (nodes past the list keep the default `dc1`).
    pub dcs: Vec<&'static str>,
    /// Serve and dial peers over TLS with these files (`wss://`, `https://`).
    pub tls: Option<TlsFiles>,
}

/// A CA and one node certificate it signed, valid for 127.0.0.1 and localhost, made with the
/// openssl command line.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// The CA certificate (PEM).
    pub ca: PathBuf,
    /// The CA's private key (PEM), to issue more certificates.
    pub ca_key: PathBuf,
    /// The node certificate (PEM).
    pub cert: PathBuf,
    /// The node certificate's private key (PEM).
    pub key: PathBuf,
}

/// Runs the openssl command line; panics with its error output when it fails.
fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl (the test command installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const EC_KEY: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:P-256",
    "-nodes",
];

/// The harness's own clients (`Ws`, `http_get_*`) present the node certificate of the CA they
/// trust, like an operator's tool inside the cluster, so they also reach nodes that require a
/// client certificate. Registered by [`TlsFiles::generate`]: (CA, certificate, key).
static HARNESS_IDENTITIES: std::sync::Mutex<Vec<(PathBuf, PathBuf, PathBuf)>> =
    std::sync::Mutex::new(Vec::new());

impl TlsFiles {
    /// Makes a fresh CA named `name` and a node certificate in `dir`.
    pub fn generate(dir: &Path, name: &str) -> TlsFiles {
        std::fs::create_dir_all(dir).expect("certificate dir");
        let (ca_key, ca) = (
            dir.join(format!("{name}-ca.key")),
            dir.join(format!("{name}-ca.pem")),
        );
        let subject = format!("/CN={name} test CA");
        let mut args = vec!["req", "-x509"];
        args.extend(EC_KEY);
        let (ca_key_s, ca_s) = (ca_key.display().to_string(), ca.display().to_string());
        args.extend([
            "-keyout", &ca_key_s, "-out", &ca_s, "-days", "30", "-subj", &subject,
        ]);
        openssl(&args);
        let mut files = TlsFiles {
            ca,
            ca_key,
            cert: PathBuf::new(),
            key: PathBuf::new(),
        };
        (files.cert, files.key) = files.issue(&format!("{name}-node"), "kv node");
        HARNESS_IDENTITIES.lock().unwrap().push((
            files.ca.clone(),
            files.cert.clone(),
            files.key.clone(),
        ));
        files
    }

    /// Issues another certificate signed by this CA, valid for 127.0.0.1 and localhost, with
    /// subject `cn`; returns its certificate and key files (`FILE-STEM.pem`, `.key`).
    pub fn issue(&self, file_stem: &str, cn: &str) -> (PathBuf, PathBuf) {
        let dir = self.ca.parent().expect("the CA's directory");
        let f = |suffix: &str| {
            dir.join(format!("{file_stem}.{suffix}"))
                .display()
                .to_string()
        };
        let (key, csr, cert, ext) = (f("key"), f("csr"), f("pem"), f("ext.cnf"));
        let subject = format!("/CN={cn}");
        let mut args = vec!["req"];
        args.extend(EC_KEY);
        args.extend(["-keyout", &key, "-out", &csr, "-subj", &subject]);
        openssl(&args);
        std::fs::write(&ext, "subjectAltName=IP:127.0.0.1,DNS:localhost\n").expect("ext file");
        let (ca, ca_key) = (
            self.ca.display().to_string(),
            self.ca_key.display().to_string(),
        );
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            &cert,
            "-days",
            "30",
            "-extfile",
            &ext,
        ]);
        (PathBuf::from(cert), PathBuf::from(key))
    }

    /// The `kvd` flags that serve these files.
    pub fn flags(&self) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.cert.display().to_string(),
            "--tls-key".into(),
            self.key.display().to_string(),
            "--tls-ca".into(),
            self.ca.display().to_string(),
        ]
    }
}

impl ClusterOpts {
    /// The flags every test node starts with: identity, address, data dir, quorums, sync
    /// (callers add `--seed`, `--dc` and the extra flags).
    pub fn node_args(&self, id: &str, addr: &str, data_dir: &Path) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "--id".into(),
            id.into(),
            "--listen".into(),
            addr.into(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--n".into(),
            self.n.to_string(),
            "--w".into(),
            self.w.to_string(),
            "--r".into(),
            self.r.to_string(),
            "--sync".into(),
            self.sync.into(),
        ];
        if let Some(tls) = &self.tls {
            args.extend(tls.flags());
        }
        args
    }

    /// The CA a client of these nodes trusts, when they serve TLS.
    pub fn ca(&self) -> Option<PathBuf> {
        self.tls.as_ref().map(|t| t.ca.clone())
    }
}

impl Default for ClusterOpts {
    fn default() -> Self {
        ClusterOpts {
            n: 3,
            w: 2,
            r: 2,
            sync: "interval",
            extra: vec!["--gossip-interval-ms".into(), "300".into()],
            dcs: Vec::new(),
            tls: None,
        }
    }
}

impl ClusterOpts {
    /// One replica per key, W = R = 1: what a single-node cluster runs with.
    pub fn one_replica() -> ClusterOpts {
        ClusterOpts {
            n: 1,
            w: 1,
            r: 1,
            ..ClusterOpts::default()
        }
    }
}

/// One node process of a test cluster.
pub struct NodeProc {
    /// Node id (`n1`, `n2`, ...).
    pub id: String,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// The node's data dir.
    pub data_dir: PathBuf,
    /// Its log file.
    pub log: PathBuf,
    /// The CA its certificate is verified against, when it serves TLS.
    pub ca: Option<PathBuf>,
    args: Vec<String>,
    child: Option<Child>,
}

impl NodeProc {
    /// `ws://ADDR` (`wss://` when it serves TLS).
    pub fn url(&self) -> String {
        let scheme = if self.ca.is_some() { "wss" } else { "ws" };
        format!("{scheme}://{}", self.addr)
    }

    /// `GET path` on this node (over TLS when it serves TLS); the body when the status is 200.
    pub fn get(&self, path: &str) -> Option<String> {
        http_get_ca(&self.addr, path, self.ca.as_deref())
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// The process id, if running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
}

/// A cluster of real kvd processes, killed on drop.
pub struct Cluster {
    /// The nodes, in start order.
    pub nodes: Vec<NodeProc>,
    /// Settings the nodes run with.
    pub opts: ClusterOpts,
    dir: tempfile::TempDir,
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

impl Cluster {
    /// Starts `k` nodes (the first is the seed of the others) and waits until every node sees
    /// every other up and in its ring.
    pub fn start(k: usize, opts: ClusterOpts) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cluster = Cluster {
            nodes: Vec::new(),
            opts,
            dir,
        };
        for i in 0..k {
            cluster.add_node(i == 0);
        }
        cluster.wait_converged(Duration::from_secs(30));
        cluster
    }

    /// Starts one more node that joins through the first; returns its index.
    pub fn add_node(&mut self, first: bool) -> usize {
        let i = self.nodes.len();
        let id = format!("n{}", i + 1);
        let addr = format!("127.0.0.1:{}", free_port());
        let data_dir = self.dir.path().join(&id);
        let log = self.dir.path().join(format!("{id}.log"));
        let mut args = self.opts.node_args(&id, &addr, &data_dir);
        if !first {
            args.push("--seed".into());
            args.push(self.nodes[0].addr.clone());
        }
        if let Some(dc) = self.opts.dcs.get(i) {
            args.push("--dc".into());
            args.push(dc.to_string());
        }
        args.extend(self.opts.extra.iter().cloned());
        let mut node = NodeProc {
            id,
            addr,
            data_dir,
            log,
            ca: self.opts.ca(),
            args,
            child: None,
        };
        spawn(&mut node);
        wait_http(&mut node, Duration::from_secs(30));
        self.nodes.push(node);
        // Joins are serialized: the next node picks its tokens knowing this one's.
        let seed = &self.nodes[0];
        let deadline = Instant::now() + Duration::from_secs(30);
        let expected = self.nodes.len() as u64;
        let in_ring = || {
            seed.get("/health")
                .and_then(|b| serde_json::from_str::<Value>(&b).ok())
                .is_some_and(|v| v["ring_nodes"].as_u64() == Some(expected))
        };
        while !in_ring() {
            assert!(
                Instant::now() < deadline,
                "node {} never entered the ring:\n{}",
                i + 1,
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        i
    }

    /// The directory holding the nodes' data dirs and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Waits until every running node reports every running node up and in its ring.
    pub fn wait_converged(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        let running: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_running())
            .collect();
        loop {
            let all = running.iter().all(|&i| {
                self.nodes[i]
                    .get("/health")
                    .and_then(|b| serde_json::from_str::<Value>(&b).ok())
                    .is_some_and(|v| {
                        v["members_up"].as_u64() == Some(running.len() as u64)
                            && v["ring_nodes"].as_u64() == Some(self.nodes.len() as u64)
                    })
            });
            if all {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "cluster did not converge:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until `observer` sees node `i` in `state` (`up`, `down`, ...).
    pub fn wait_state(&self, observer: usize, i: usize, state: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        let id = self.nodes[i].id.clone();
        loop {
            let observer_node = &self.nodes[observer];
            let status = ws_request_blocking_ca(
                &observer_node.url(),
                observer_node.ca.as_deref(),
                json!({"op": "status"}),
            );
            let seen = status["nodes"]
                .as_array()
                .and_then(|a| a.iter().find(|n| n["id"] == id.as_str()).cloned())
                .map(|n| n["state"].as_str().unwrap_or("").to_string());
            if seen.as_deref() == Some(state) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} never saw {id} {state} (saw {seen:?})",
                self.nodes[observer].id
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// SIGKILLs node `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            signal(c.id(), "CONT");
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERMs node `i` and waits for its clean exit; returns its exit status code.
    pub fn stop(&mut self, i: usize) -> Option<i32> {
        let mut c = self.nodes[i].child.take()?;
        signal(c.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts node `i` again with the same flags and data dir, and waits for its HTTP port.
    pub fn restart(&mut self, i: usize) {
        assert!(self.nodes[i].child.is_none(), "node {i} is still running");
        spawn(&mut self.nodes[i]);
        wait_http(&mut self.nodes[i], Duration::from_secs(30));
    }

    /// Sets `flag` to `value` in node `i`'s command line for its next (re)start.
    pub fn set_flag(&mut self, i: usize, flag: &str, value: &str) {
        let args = &mut self.nodes[i].args;
        match args.iter().position(|a| a == flag) {
            Some(p) if p + 1 < args.len() => args[p + 1] = value.to_string(),
            _ => {
                args.push(flag.to_string());
                args.push(value.to_string());
            }
        }
    }

    /// SIGSTOPs node `i` (a hung node).
    pub fn pause(&self, i: usize) {
        if let Some(pid) = self.nodes[i].pid() {
            signal(pid, "STOP");
            faults::wait_stopped(pid);
        }
    }

    /// SIGCONTs node `i`.
    pub fn resume(&self, i: usize) {
        if let Some(pid) = self.nodes[i].pid() {
            signal(pid, "CONT");
        }
    }

    /// Every node's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            push_log_tail(&mut out, &n.id, &n.addr, &n.log, 30);
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

fn spawn(node: &mut NodeProc) {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&node.log)
        .expect("open node log");
    let child = Command::new(kvd_bin())
        .args(&node.args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("start kvd");
    node.child = Some(child);
}

/// Waits until the node answers `/health` as itself. Fails at once when its process has
/// exited (a port taken since it was picked: another test's node may be answering there,
/// and a test must never talk to it thinking it is this one).
fn wait_http(node: &mut NodeProc, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = node
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
        {
            panic!(
                "node {} ({}) exited during start ({status}); log:\n{}",
                node.id,
                node.addr,
                std::fs::read_to_string(&node.log).unwrap_or_default()
            );
        }
        if let Some(body) = node.get("/health") {
            let id = serde_json::from_str::<Value>(&body)
                .ok()
                .map(|v| v["id"].clone());
            assert_eq!(
                id,
                Some(Value::from(node.id.as_str())),
                "{} answers /health as another node: {body}",
                node.addr
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node {} did not answer /health; log:\n{}",
            node.addr,
            std::fs::read_to_string(&node.log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Node flags under which tombstones (and expired values) are purged as soon as every replica
/// has synced after them: no periodic anti-entropy (tests run `repair`), no grace period,
/// hints expire after a second. See [`purge_now`].
pub const PURGE_SOON: [&str; 6] = [
    "--anti-entropy-interval-s",
    "0",
    "--tombstone-grace-s",
    "0",
    "--hint-expiry-s",
    "1",
];

/// On nodes started with [`PURGE_SOON`]: waits out the hint expiry, then runs `repair` on every
/// node of `urls` twice (the first round syncs every replica, the second purges).
pub async fn purge_now(urls: &[String]) {
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    for _ in 0..2 {
        for url in urls {
            let r = Ws::connect(url)
                .await
                .request(json!({"op": "repair"}))
                .await;
            assert_eq!(r["ok"], true, "repair on {url}: {r}");
        }
    }
}

/// Appends the last `lines` lines of a node's log under a heading naming it (for failure
/// messages); an unreadable log adds the heading alone.
pub fn push_log_tail(out: &mut String, id: &str, addr: &str, log: &Path, lines: usize) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(lines).collect();
    out.push_str(&format!("--- {id} ({addr}) ---\n"));
    for l in tail.into_iter().rev() {
        out.push_str(l);
        out.push('\n');
    }
}

/// Starts one kvd with `args` (which must make it listen on `addr`), its stderr appended to
/// `log`, and waits up to 30 s until it answers HTTP on `/health` (whatever the status: a node
/// whose storage failed answers 503). Panics if it exits first. The caller stops it.
pub fn start_kvd<I, A>(addr: &str, args: I, log: &Path) -> Child
where
    I: IntoIterator<Item = A>,
    A: AsRef<std::ffi::OsStr>,
{
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("the node's log file");
    let mut child = Command::new(kvd_bin())
        .args(args)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start kvd");
    let deadline = Instant::now() + Duration::from_secs(30);
    while http_get_full(addr, "/health").is_none() {
        let exited = child.try_wait().unwrap();
        if exited.is_some() || Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("kvd did not come up on {addr} (exit: {exited:?})");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

/// The value of the unlabelled counter `name` in node `addr`'s `/metrics` (0 when absent).
pub fn metric(addr: &str, name: &str) -> u64 {
    let text = http_get(addr, "/metrics").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// A plain HTTP GET; the body when the status is 200.
pub fn http_get(addr: &str, path: &str) -> Option<String> {
    http_get_full(addr, path).and_then(|(status, body)| (status == 200).then_some(body))
}

/// A plain HTTP GET: status and body.
pub fn http_get_full(addr: &str, path: &str) -> Option<(u16, String)> {
    http_get_full_ca(addr, path, None)
}

/// A GET over HTTPS verified against `ca` when given, else plain HTTP; the body when the
/// status is 200.
pub fn http_get_ca(addr: &str, path: &str, ca: Option<&Path>) -> Option<String> {
    http_get_full_ca(addr, path, ca).and_then(|(status, body)| (status == 200).then_some(body))
}

/// A GET over HTTPS verified against `ca` when given, else plain HTTP: status and body.
pub fn http_get_full_ca(addr: &str, path: &str, ca: Option<&Path>) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let s =
        std::net::TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let mut buf = Vec::new();
    match ca {
        None => {
            let mut s = s;
            s.write_all(request.as_bytes()).ok()?;
            s.read_to_end(&mut buf).ok()?;
        }
        Some(ca) => {
            use tokio_rustls::rustls::{ClientConnection, StreamOwned};
            let name = "127.0.0.1".try_into().ok()?;
            let conn = ClientConnection::new(tls_client_config(ca), name).ok()?;
            let mut s = StreamOwned::new(conn, s);
            s.write_all(request.as_bytes()).ok()?;
            s.read_to_end(&mut buf).ok()?;
        }
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// A TLS client configuration trusting only the CA certificates in `ca`, presenting the node
/// certificate that CA issued for the harness (see `HARNESS_IDENTITIES`) to nodes that ask.
pub fn tls_client_config(ca: &Path) -> std::sync::Arc<tokio_rustls::rustls::ClientConfig> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls::{ClientConfig, RootCertStore};
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).expect("read the CA file") {
        roots
            .add(c.expect("a PEM certificate"))
            .expect("a CA certificate");
    }
    let provider = std::sync::Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots);
    let identity = HARNESS_IDENTITIES
        .lock()
        .unwrap()
        .iter()
        .find(|(c, _, _)| c == ca)
        .map(|(_, cert, key)| (cert.clone(), key.clone()));
    let config = match identity {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(&cert)
                .expect("read the harness certificate")
                .collect::<Result<Vec<_>, _>>()
                .expect("PEM certificates");
            let key = PrivateKeyDer::from_pem_file(&key).expect("the harness key");
            config
                .with_client_auth_cert(chain, key)
                .expect("a client certificate")
        }
        None => config.with_no_client_auth(),
    };
    std::sync::Arc::new(config)
}

/// A WebSocket client connection for tests: send JSON, read the answer with the same id.
pub struct Ws {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_id: u64,
}

impl Ws {
    /// Connects to `url`.
    pub async fn connect(url: &str) -> Ws {
        Ws::connect_ca(url, None).await
    }

    /// Connects to `url`, verifying a `wss://` node's certificate against `ca`.
    pub async fn connect_ca(url: &str, ca: Option<&Path>) -> Ws {
        let connector = ca.map(|ca| tokio_tungstenite::Connector::Rustls(tls_client_config(ca)));
        let (ws, _) = tokio_tungstenite::connect_async_tls_with_config(url, None, false, connector)
            .await
            .unwrap_or_else(|e| panic!("connect {url}: {e}"));
        Ws { ws, next_id: 1 }
    }

    /// Sends `req` (an object; an id is added) and returns the answer.
    pub async fn request(&mut self, mut req: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        req["id"] = json!(id);
        self.ws
            .send(Message::text(req.to_string()))
            .await
            .expect("send a frame");
        self.read_id(Some(id)).await
    }

    /// Sends a raw text frame and returns the next answer.
    pub async fn send_raw(&mut self, text: &str) -> Value {
        self.ws
            .send(Message::text(text.to_string()))
            .await
            .expect("send a frame");
        self.read_id(None).await
    }

    /// Sends a raw message and returns the next answer.
    pub async fn send_message(&mut self, msg: Message) -> Value {
        self.ws.send(msg).await.expect("send a frame");
        self.read_id(None).await
    }

    /// Sends every frame before reading any answer (a pipelining client), then reads one
    /// answer per frame, by id; panics on a second answer for an id.
    pub async fn pipeline(&mut self, frames: &[String]) -> std::collections::BTreeMap<u64, Value> {
        for f in frames {
            self.ws
                .feed(Message::text(f.clone()))
                .await
                .expect("queue a frame");
        }
        self.ws.flush().await.expect("send the frames");
        let mut answers = std::collections::BTreeMap::new();
        while answers.len() < frames.len() {
            let v = self.next_answer().await;
            let id = v["id"].as_u64().unwrap_or(0);
            assert!(answers.insert(id, v).is_none(), "two answers for id {id}");
        }
        answers
    }

    async fn read_id(&mut self, id: Option<u64>) -> Value {
        loop {
            let v = self.next_answer().await;
            if id.is_none() || v["id"].as_u64() == id {
                return v;
            }
        }
    }

    /// The next text frame, as JSON.
    async fn next_answer(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(20), self.ws.next())
                .await
                .expect("an answer within 20 s")
                .expect("the connection is open")
                .expect("a readable frame");
            if let Message::Text(t) = msg {
                return serde_json::from_str(&t).expect("answers are JSON");
            }
        }
    }
}

/// Writes keys `{prefix}0`, `{prefix}1`, ... (each key as its own value) through `url`, one
/// put at a time with `pause` between, until `stop` is set; the task returns the keys whose
/// put was acknowledged.
pub fn spawn_writer(
    url: String,
    prefix: String,
    pause: Duration,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let mut ws = Ws::connect(&url).await;
        let mut acked = Vec::new();
        let mut i = 0u64;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let key = format!("{prefix}{i}");
            let r = ws
                .request(json!({"op": "put", "key": key, "value": key}))
                .await;
            if r["ok"] == true {
                acked.push(key);
            }
            i += 1;
            tokio::time::sleep(pause).await;
        }
        acked
    })
}

/// One request on a fresh connection, from synchronous code (also from inside an async
/// test: it runs on a thread of its own).
pub fn ws_request_blocking(url: &str, req: Value) -> Value {
    ws_request_blocking_ca(url, None, req)
}

/// [`ws_request_blocking`] to a node whose certificate is verified against `ca`.
pub fn ws_request_blocking_ca(url: &str, ca: Option<&Path>, req: Value) -> Value {
    let url = url.to_string();
    let ca = ca.map(Path::to_path_buf);
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let mut ws = Ws::connect_ca(&url, ca.as_deref()).await;
            ws.request(req).await
        })
    })
    .join()
    .expect("request thread")
}

/// Runs kvcli with `args`; returns (exit code, stdout, stderr).
pub fn kvcli(args: &[&str]) -> (i32, String, String) {
    kvcli_with_stdin(args, None)
}

/// Runs kvcli with `args` and `stdin` as standard input.
pub fn kvcli_with_stdin(args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    use std::io::Write;
    let mut cmd = Command::new(kvcli_bin());
    cmd.args(args)
        .env_remove("KV_NODE")
        .env_remove("KV_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    let mut child = cmd.spawn().expect("start kvcli");
    if let Some(text) = stdin {
        let mut si = child.stdin.take().expect("stdin");
        si.write_all(text.as_bytes()).expect("write stdin");
    }
    let out = child.wait_with_output().expect("kvcli output");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

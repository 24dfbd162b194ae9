//! `kvd dev --nodes K`: a ready local cluster of K node processes on consecutive ports, each
//! with its own data dir and log file, stopped together on Ctrl-C.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Args;

use crate::config::whole_number;
use crate::{Error, Result};

/// Flags of `kvd dev`.
#[derive(Args, Debug, Clone)]
pub struct DevArgs {
    /// How many nodes to start (1 to 64).
    #[arg(long, default_value_t = 3, value_parser = whole_number::<usize>)]
    pub nodes: usize,
    /// Port of the first node; the others take the next ones. Not 0: each node must
    /// advertise the port its peers and clients reach it on.
    #[arg(long, default_value_t = 7070, value_parser = port)]
    pub base_port: u16,
    /// Where the nodes keep their data dirs and logs.
    #[arg(long, default_value = "./kvd-dev")]
    pub dir: PathBuf,
    /// Replicas per key.
    #[arg(long, value_parser = whole_number::<usize>)]
    pub n: Option<usize>,
    /// Default write quorum.
    #[arg(long, value_parser = whole_number::<usize>)]
    pub w: Option<usize>,
    /// Default read quorum.
    #[arg(long, value_parser = whole_number::<usize>)]
    pub r: Option<usize>,
    /// Commit-log durability of every node: always, interval or none (passed on to each
    /// node, which refuses anything else).
    #[arg(long)]
    pub sync: Option<String>,
}

/// A TCP port a node can listen on and advertise: 1 to 65535.
fn port(s: &str) -> std::result::Result<u16, String> {
    match whole_number::<u64>(s)? {
        p @ 1..=65535 => Ok(p as u16),
        _ => Err("must be between 1 and 65535 (each node advertises its real port)".into()),
    }
}

/// A started child node, stopped with SIGTERM when dropped.
struct NodeProcess {
    id: String,
    addr: String,
    child: Child,
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        terminate(&mut self.child);
    }
}

/// Sends SIGTERM and waits up to 10 s for a clean shutdown, then SIGKILL.
fn terminate(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    // SAFETY: kill(2) with a pid we own and a valid signal number has no memory effects.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Runs the local cluster until Ctrl-C (or SIGTERM).
pub async fn run(args: DevArgs) -> Result<()> {
    if args.nodes == 0 || args.nodes > 64 {
        return Err(Error::Config("--nodes must be between 1 and 64".into()));
    }
    if args.base_port as usize + args.nodes > 65535 {
        return Err(Error::Config(
            "--base-port leaves no room for the nodes".into(),
        ));
    }
    let exe = std::env::current_exe()
        .map_err(|e| Error::Io(format!("cannot find the kvd executable: {e}")))?;
    std::fs::create_dir_all(&args.dir)
        .map_err(|e| Error::Io(format!("cannot create {}: {e}", args.dir.display())))?;
    let first = format!("127.0.0.1:{}", args.base_port);
    // Watched from the start: a signal while the nodes start stops the ones already running
    // (a SIGTERM used to kill dev by its default action and leave them behind, and a SIGINT
    // sent by a script to a background dev was ignored until the cluster was ready).
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Error::Io(format!("cannot watch SIGTERM: {e}")))?;
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| Error::Io(format!("cannot watch SIGINT: {e}")))?;
    let mut nodes: Vec<NodeProcess> = Vec::new();
    let started = tokio::select! {
        r = start_nodes(&exe, &args, &first, &mut nodes) => Some(r),
        _ = term.recv() => None,
        _ = interrupt.recv() => None,
    };
    match started {
        Some(r) => r?,
        None => {
            println!(
                "kvd dev: stopped while starting; stopping {} nodes",
                nodes.len()
            );
            drop(nodes);
            return Ok(());
        }
    }
    println!("kvd dev: a cluster of {} nodes is ready", nodes.len());
    for n in &nodes {
        println!(
            "  {}  ws://{}  (data {}, log {})",
            n.id,
            n.addr,
            args.dir.join(&n.id).display(),
            args.dir.join(format!("{}.log", n.id)).display()
        );
    }
    println!("try: kvcli --node ws://{first} put hello world");
    println!("press Ctrl-C to stop every node");

    let mut check = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = interrupt.recv() => break,
            _ = term.recv() => break,
            _ = check.tick() => {
                for n in nodes.iter_mut() {
                    if let Ok(Some(status)) = n.child.try_wait() {
                        eprintln!("kvd dev: node {} exited ({status}); see its log", n.id);
                    }
                }
                nodes.retain_mut(|n| !matches!(n.child.try_wait(), Ok(Some(_))));
                if nodes.is_empty() {
                    return Err(Error::Io("every node exited".into()));
                }
            }
        }
    }
    println!("kvd dev: stopping {} nodes", nodes.len());
    drop(nodes);
    Ok(())
}

/// Starts the nodes one at a time into `nodes` (the first is the seed of the others), each
/// waited for until it answers and is in the ring.
async fn start_nodes(
    exe: &Path,
    args: &DevArgs,
    first: &str,
    nodes: &mut Vec<NodeProcess>,
) -> Result<()> {
    for i in 0..args.nodes {
        let id = format!("n{}", i + 1);
        let addr = format!("127.0.0.1:{}", args.base_port as usize + i);
        let seed = (i > 0).then_some(first);
        let child = spawn_node(exe, args, &id, &addr, seed)?;
        nodes.push(NodeProcess {
            id: id.clone(),
            addr: addr.clone(),
            child,
        });
        // One at a time: each node picks its tokens knowing those of the nodes before it.
        wait_healthy(&mut nodes[i], &log_path(args, &id), Duration::from_secs(30)).await?;
        wait_converged(first, i + 1, Duration::from_secs(30)).await?;
    }
    Ok(())
}

/// Where node `id` writes its log.
fn log_path(args: &DevArgs, id: &str) -> PathBuf {
    args.dir.join(format!("{id}.log"))
}

fn spawn_node(
    exe: &Path,
    args: &DevArgs,
    id: &str,
    addr: &str,
    seed: Option<&str>,
) -> Result<Child> {
    let data = args.dir.join(id);
    let log_path = log_path(args, id);
    // Appended to: a second `kvd dev` on the same --dir keeps the earlier runs' lines.
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| Error::Io(format!("cannot open {}: {e}", log_path.display())))?;
    let mut cmd = Command::new(exe);
    cmd.arg("--id").arg(id).arg("--listen").arg(addr);
    cmd.arg("--data-dir").arg(&data);
    if let Some(seed) = seed {
        cmd.arg("--seed").arg(seed);
    }
    for (flag, v) in [("--n", args.n), ("--w", args.w), ("--r", args.r)] {
        if let Some(v) = v {
            cmd.arg(flag).arg(v.to_string());
        }
    }
    if let Some(sync) = &args.sync {
        cmd.arg("--sync").arg(sync);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log));
    cmd.spawn()
        .map_err(|e| Error::Io(format!("cannot start node {id}: {e}")))
}

/// The body of a 200 answer to `GET path`, or None (no answer within a second included: a
/// port can be held by something that accepts and never answers).
async fn http_get(addr: &str, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let get = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.ok()?;
        let text = String::from_utf8(out).ok()?;
        let (head, body) = text.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.1 200").then(|| body.to_string())
    };
    tokio::time::timeout(Duration::from_secs(1), get)
        .await
        .ok()
        .flatten()
}

/// Waits until `node` answers /health as itself (whatever else holds its port does not
/// count); fails as soon as it exits, with the end of its log (a taken port, say).
async fn wait_healthy(node: &mut NodeProcess, log: &Path, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = node.child.try_wait() {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let last = text
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            return Err(Error::Io(format!(
                "node {} exited during start ({status}): {last} (log: {})",
                node.id,
                log.display()
            )));
        }
        if let Some(body) = http_get(&node.addr, "/health").await {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            if v["id"] == node.id.as_str() {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(Error::Io(format!(
        "node {} did not become healthy at {}",
        node.id, node.addr
    )))
}

/// Waits until the first node's ring holds at least `nodes` nodes, all up. At least: a dev
/// cluster started again over its data dirs remembers every member from the start (also
/// members of an earlier, larger run), and its nodes keep their tokens.
async fn wait_converged(addr: &str, nodes: usize, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(body) = http_get(addr, "/health").await {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let at_least = |field: &str| v[field].as_u64().is_some_and(|n| n >= nodes as u64);
            if at_least("ring_nodes") && at_least("members_up") {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(Error::Io(
        "the nodes did not all join the ring in time".into(),
    ))
}

//! `kvd`: run a node, a local development cluster, or the storage benchmark.

use std::process::ExitCode;

#[global_allocator]
static ALLOC: kvd::allocator::Allocator = kvd::allocator::Allocator;

use clap::{Parser, Subcommand};
use kvd::config::{NodeArgs, NodeConfig};
use kvd::dev::DevArgs;
use kvd::node::Node;
use kvd::{Error, Result};

#[derive(Parser)]
#[command(
    name = "kvd",
    version,
    about = "A node of a Dynamo-style key-value store",
    args_conflicts_with_subcommands = true,
    // `--weight -1` is a bad value, not an unknown flag: let the value parser say so.
    allow_negative_numbers = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    node: NodeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Start a ready local cluster of K node processes and stop them all on Ctrl-C.
    #[command(allow_negative_numbers = true)]
    Dev(DevArgs),
    /// Run db_bench-style workloads on the storage engine alone.
    #[command(allow_negative_numbers = true)]
    BenchStorage(kvd::bench::BenchArgs),
}

/// One line for a usage error of clap (see [`kv_core::usage::one_line`]).
fn usage_error_line(e: &clap::Error) -> String {
    kv_core::usage::one_line(&e.render().to_string())
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() => {
            eprintln!("kvd: {}", usage_error_line(&e));
            return ExitCode::from(2);
        }
        Err(e) => {
            // --help and --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
    };
    if matches!(cli.command, Some(Command::BenchStorage(_))) {
        // `kvd bench-storage | head` should end quietly when head closes the pipe, as Unix
        // tools do, not panic on the next print: restore the default SIGPIPE action that the
        // Rust runtime sets to ignore. Only for this one-shot command: the node and `kvd dev`
        // keep ignoring it (a closed socket or log pipe must not kill a node).
        // SAFETY: before any thread of ours exists; SIG_DFL is a valid action.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let result = match cli.command {
        Some(Command::BenchStorage(args)) => kvd::bench::run(args),
        Some(Command::Dev(args)) => runtime().and_then(|rt| rt.block_on(kvd::dev::run(args))),
        None => NodeConfig::resolve(cli.node).and_then(|config| {
            runtime_with(config.worker_threads).and_then(|rt| rt.block_on(run_node(config)))
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kvd: {e}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    runtime_with(None)
}

/// The multi-threaded runtime, with `workers` threads when given (else one per core).
fn runtime_with(workers: Option<usize>) -> Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        builder.worker_threads(n);
    }
    builder
        .enable_all()
        .build()
        .map_err(|e| Error::Io(format!("cannot start the async runtime: {e}")))
}

/// A node restarted into an existing cluster knows only itself until gossip brings the ring
/// back, and a coordinator with a one-node ring takes every key as its own (N, and so the
/// default W, capped at one): a write acknowledged then stays on a node that is not a replica
/// of the key and is never read again. So such a node waits for its first gossip exchange
/// (bounded: when the whole cluster restarts at once, nobody can answer until someone serves)
/// before it takes requests.
async fn wait_for_the_ring(node: &kvd::node::Node) {
    // Peers are remembered once gossip has run; a newcomer still joining already got the
    // cluster's ring from its seed.
    let restarted_in_a_cluster =
        !node.is_joining() && !kvd::gossip::remembered_peers(&node.config.data_dir).is_empty();
    if !restarted_in_a_cluster || node.ring().len() > 1 {
        return;
    }
    let limit = (node.config.gossip_interval * 10).clamp(
        std::time::Duration::from_secs(2),
        std::time::Duration::from_secs(10),
    );
    let deadline = tokio::time::Instant::now() + limit;
    while node.ring().len() <= 1 {
        if tokio::time::Instant::now() >= deadline {
            kvd::warn!("no peer answered within {limit:?}: serving with a ring of this node alone");
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

async fn run_node(config: NodeConfig) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .map_err(|e| Error::Io(format!("cannot listen on {}: {e}", config.listen)))?;
    // Watched before anything is started: a SIGTERM that came once the node answers (a stop
    // right after a readiness probe) took the default action and killed the process
    // without its clean shutdown, and one that came while a newcomer was still asking its
    // seeds (up to half a minute) was ignored or killed it.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Error::Io(format!("cannot watch SIGTERM: {e}")))?;
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| Error::Io(format!("cannot watch SIGINT: {e}")))?;
    // Starting (opening the storage, joining through the seeds) stops at a signal: nothing
    // has been served yet, and dropping the start closes what it opened.
    let node = tokio::select! {
        node = Node::start(config) => node?,
        _ = term.recv() => {
            kvd::info!("SIGTERM while starting: stopped before serving");
            return Ok(());
        }
        _ = interrupt.recv() => {
            kvd::info!("SIGINT while starting: stopped before serving");
            return Ok(());
        }
    };
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| Error::Io(format!("cannot watch SIGHUP: {e}")))?;
    let reloader = node.clone();
    tokio::spawn(async move {
        // SIGHUP: load the TLS files again (a rotated certificate), keeping the old ones if
        // the new ones do not load.
        while hangup.recv().await.is_some() {
            match &reloader.config.tls {
                Some(tls) => match tls.reload() {
                    Ok(()) => kvd::info!("SIGHUP: TLS certificate, key and CA reloaded"),
                    Err(e) => kvd::error!("SIGHUP: TLS files not reloaded, the old ones stay: {e}"),
                },
                None => kvd::info!("SIGHUP: nothing to reload (no TLS configured)"),
            }
        }
    });
    kvd::info!(
        "listening on {} ({}://{0}), {} member(s) known, heap: {}",
        node.config.listen,
        if node.config.tls.is_some() {
            "wss"
        } else {
            "ws"
        },
        node.membership().members().count(),
        kvd::allocator::name()
    );
    let gossip = tokio::spawn(kvd::gossip::run(node.clone()));
    wait_for_the_ring(&node).await;
    let server = tokio::spawn(kvd::server::serve(node.clone(), listener));
    let handoff = tokio::spawn(kvd::hints::run_delivery(node.clone()));
    let anti_entropy = tokio::spawn(kvd::anti_entropy::run(node.clone()));
    tokio::spawn(kvd::rebalance::run_auto_cleanup(node.clone()));
    tokio::spawn(kvd::node::watch_disk_space(node.clone()));
    // A node that was down while another joined gave ranges up without seeing the join end.
    node.schedule_cleanup();
    if node.is_joining() {
        tokio::spawn(kvd::rebalance::run_join(node.clone()));
    }
    if node.is_leaving() {
        let n = node.clone();
        tokio::spawn(async move {
            // A restarted node knows only itself until gossip brings the others back.
            while n.ring().len() <= 1 {
                tokio::time::sleep(n.config.gossip_interval).await;
            }
            match kvd::rebalance::run_decommission(&n).await {
                Ok(moved) => kvd::info!("resumed decommission finished: {moved} keys handed over"),
                Err(e) => kvd::error!("resumed decommission failed: {e}"),
            }
        });
    }
    if node.moving_from().is_some() {
        tokio::spawn(kvd::rebalance::run_reweigh(node.clone()));
    }

    tokio::select! {
        _ = interrupt.recv() => {}
        _ = term.recv() => {}
    }
    kvd::info!("shutting down");
    node.begin_shutdown();
    let _ = server.await;
    let _ = gossip.await;
    let _ = handoff.await;
    let _ = anti_entropy.await;
    node.close();
    kvd::info!("stopped cleanly");
    Ok(())
}

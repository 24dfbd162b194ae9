//! kvcli: the command-line client of the store. One-shot commands for scripts, script mode
//! (commands from standard input, one per line), and an interactive REPL on a terminal.
//!
//! Modules: `client` speaks the node's WebSocket protocol (and plain HTTP for `/metrics`);
//! `commands` runs and prints each command; `repl` reads lines (script mode and the REPL with
//! completion, hints and history); `words` splits a line like a shell; `bench` and `workload`
//! are the load generator; `autoscale` grows and shrinks the cluster with its load; `import`
//! loads JSON lines; `metrics` summarizes `/metrics`;
//! `style` and `progress` decide what a terminal gets (colour, progress bars).
//!
//! Exit status: 0 on success (a get of an absent key succeeds); 1 when the node answered with
//! an error (quorum not met, too large, bad request, timeout) or a command failed (an import
//! line, a bench where every operation failed); 2 for bad usage; 3 when the node is
//! unreachable or the token is refused.

#![deny(clippy::unwrap_used)]

mod admin;
mod autoscale;
mod bench;
mod client;
mod commands;
mod import;
mod metrics;
mod progress;
mod repl;
mod style;
mod words;
mod workload;

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use client::{Client, ClientError};
use commands::{Command, Env};
use style::{error_line, Style};

#[derive(Parser, Debug)]
#[command(
    name = "kvcli",
    version,
    about = "Client of the kv key-value store: commands, a REPL (run without a command), admin and bench"
)]
struct Cli {
    /// Node to talk to.
    #[arg(
        long,
        env = "KV_NODE",
        default_value = DEFAULT_NODE,
        global = true
    )]
    node: String,
    /// Machine-readable output: one JSON document per command.
    #[arg(long, global = true)]
    json: bool,
    /// Token to present to the node.
    #[arg(long, env = "KV_TOKEN", global = true)]
    token: Option<String>,
    /// Seconds to wait for the node.
    #[arg(long, default_value_t = 10.0, global = true)]
    timeout: f64,
    /// PEM CA certificates a `wss://` node's certificate is verified against (default: the
    /// system's roots).
    #[arg(long, env = "KV_CA_FILE", global = true)]
    ca_file: Option<std::path::PathBuf>,
    /// PEM client certificate chain to present to a `wss://` node that requires one (mutual
    /// TLS); needs --key-file.
    #[arg(long, env = "KV_CERT_FILE", global = true)]
    cert_file: Option<std::path::PathBuf>,
    /// The PEM private key of --cert-file.
    #[arg(long, env = "KV_KEY_FILE", global = true)]
    key_file: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

/// A line of script mode or the REPL: a command without the global options.
#[derive(Parser, Debug)]
#[command(
    name = "",
    no_binary_name = true,
    disable_version_flag = true,
    disable_help_subcommand = true
)]
pub struct Line {
    #[command(subcommand)]
    command: Command,
}

/// Exit status for an error.
pub fn exit_code(e: &ClientError) -> u8 {
    match e {
        ClientError::Unreachable(_) => 3,
        ClientError::Refused { code, .. } if code == "unauthorized" => 3,
        ClientError::Usage(_) => 2,
        _ => 1,
    }
}

/// One line for a usage error of clap (see [`kv_core::usage::one_line`]).
pub fn usage_error_line(e: &clap::Error) -> String {
    kv_core::usage::one_line(&e.render().to_string())
}

/// The node kvcli talks to when neither --node nor KV_NODE says otherwise.
const DEFAULT_NODE: &str = "ws://127.0.0.1:7070";

fn main() -> ExitCode {
    // `kvcli metrics | head` should end quietly when head closes the pipe, as Unix tools do,
    // instead of failing on the next print: restore the default SIGPIPE action that the Rust
    // runtime sets to ignore.
    #[cfg(unix)]
    // SAFETY: called first thing in main, before any thread exists; SIG_DFL is a valid action.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) if e.use_stderr() => {
            error_line(&usage_error_line(&e));
            return ExitCode::from(2);
        }
        Err(e) => {
            // --help and --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
    };
    if !(cli.timeout > 0.0 && Duration::try_from_secs_f64(cli.timeout).is_ok()) {
        error_line("--timeout must be a positive number of seconds");
        return ExitCode::from(2);
    }
    let threads = match &cli.command {
        Some(Command::Bench(args)) => args.threads,
        _ => None,
    };
    if threads == Some(0) {
        error_line("bench: --threads must be at least 1");
        return ExitCode::from(2);
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = threads {
        builder.worker_threads(n);
    }
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            error_line(&format!("cannot start the async runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    ExitCode::from(rt.block_on(async_main(cli)))
}

/// The node's URL from `--node` / `KV_NODE`: `HOST:PORT` is taken as `ws://HOST:PORT`, an
/// empty value as the default.
///
/// Errors: a scheme other than `ws://` and `wss://`, no host, or a port that is not a number
/// from 1 to 65535 (a usage error: nothing was tried).
fn node_url(node: &str) -> Result<String, String> {
    let node = node.trim();
    if node.is_empty() {
        return Ok(DEFAULT_NODE.to_string());
    }
    let url = if node.contains("://") {
        node.to_string()
    } else {
        format!("ws://{node}")
    };
    let bad = |why: &str| {
        format!("--node {node}: {why} (give ws://HOST:PORT, wss://HOST:PORT or HOST:PORT)")
    };
    let rest = match url.split_once("://") {
        Some(("ws" | "wss", rest)) => rest,
        Some((scheme, _)) => return Err(bad(&format!("{scheme}:// is not a node URL"))),
        None => return Err(bad("no scheme")),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    // The port follows the last colon that is not inside an [IPv6] literal.
    let (host, port) = match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') => (&authority[..i], Some(&authority[i + 1..])),
        _ => (authority, None),
    };
    if host.is_empty() || host == "[]" {
        return Err(bad("no host"));
    }
    if let Some(p) = port {
        if !matches!(p.parse::<u16>(), Ok(1..)) {
            return Err(bad(&format!(
                "the port {p:?} is not a number from 1 to 65535"
            )));
        }
    }
    Ok(url)
}

async fn async_main(mut cli: Cli) -> u8 {
    // `repair --node NODE` (INTERFACE.md) shares the global flag: a value without a port is a
    // node id to run the repair on, through the node of KV_NODE or the default.
    if let Some(commands::Command::Repair { node }) = &mut cli.command {
        if !cli.node.contains(':') {
            *node = Some(cli.node.clone());
            cli.node = std::env::var("KV_NODE").unwrap_or_else(|_| DEFAULT_NODE.to_string());
        }
    }
    cli.node = match node_url(&cli.node) {
        Ok(url) => url,
        Err(e) => {
            error_line(&e);
            return 2;
        }
    };
    if cli.node.starts_with("wss://") {
        let identity = match (cli.cert_file.as_deref(), cli.key_file.as_deref()) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => {
                let e = client::ClientError::Usage("--cert-file and --key-file go together".into());
                error_line(&e.to_string());
                return exit_code(&e);
            }
        };
        if let Err(e) = client::use_tls(cli.ca_file.as_deref(), identity) {
            error_line(&e.to_string());
            return exit_code(&e);
        }
    }
    // main() refused a timeout that is not a Duration.
    let timeout = Duration::try_from_secs_f64(cli.timeout).unwrap_or(Duration::MAX);
    let interactive = cli.command.is_none() && std::io::stdin().is_terminal();
    let env = Env {
        json: cli.json,
        out: Style::stdout(cli.json),
        node: cli.node.clone(),
        token: cli.token.clone(),
        timeout,
        memory: interactive.then(Default::default),
    };
    let client = match Client::connect(&cli.node, cli.token.as_deref(), timeout).await {
        Ok(c) => c,
        Err(e) => {
            error_line(&e.to_string());
            return exit_code(&e);
        }
    };
    match cli.command {
        Some(cmd) => match commands::run(&client, cmd, &env).await {
            Ok(()) => 0,
            Err(e) => {
                error_line(&e.to_string());
                exit_code(&e)
            }
        },
        None => {
            let session = repl::Session {
                client: std::sync::Mutex::new(client),
                env,
            };
            if interactive {
                repl::interactive(session).await
            } else {
                repl::script(session).await
            }
        }
    }
}

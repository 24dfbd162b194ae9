//! kvcli: the command-line client of the store. One-shot commands for scripts, script mode
//! (commands from standard input, one per line), and an interactive REPL on a terminal.
//!
//! Exit status: 0 on success (a get of an absent key succeeds); 1 when the node answered with
//! an error (quorum not met, too large, bad request, timeout); 2 for bad usage; 3 when the node
//! is unreachable or the token is refused.

mod bench;
mod client;
mod commands;
mod repl;
mod words;

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use client::{Client, ClientError};
use commands::Command;

#[derive(Parser, Debug)]
#[command(name = "kvcli", version, about = "Client of the kv key-value store")]
struct Cli {
    /// Node to talk to.
    #[arg(
        long,
        env = "KV_NODE",
        default_value = "ws://127.0.0.1:7070",
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
    #[command(subcommand)]
    command: Option<Command>,
}

/// A line of script mode or the REPL: a command without the global options.
#[derive(Parser, Debug)]
#[command(name = "", no_binary_name = true, disable_version_flag = true)]
pub struct Line {
    #[command(subcommand)]
    command: Command,
}

/// Exit status for an error.
pub fn exit_code(e: &ClientError) -> u8 {
    match e {
        ClientError::Unreachable(_) => 3,
        ClientError::Refused { code, .. } if code == "unauthorized" => 3,
        _ => 1,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !(cli.timeout > 0.0 && cli.timeout.is_finite()) {
        eprintln!("kvcli: --timeout must be a positive number of seconds");
        return ExitCode::from(2);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kvcli: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    ExitCode::from(rt.block_on(async_main(cli)))
}

async fn async_main(cli: Cli) -> u8 {
    let timeout = Duration::from_secs_f64(cli.timeout);
    let connect = || Client::connect(&cli.node, cli.token.as_deref(), timeout);
    match cli.command {
        Some(cmd) => {
            let client = match connect().await {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("kvcli: {e}");
                    return exit_code(&e);
                }
            };
            let cmd = with_bench_target(cmd, &cli.node, cli.token.as_deref());
            match commands::run(&client, cmd, cli.json).await {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("kvcli: {e}");
                    exit_code(&e)
                }
            }
        }
        None => {
            let client = match connect().await {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("kvcli: {e}");
                    return exit_code(&e);
                }
            };
            let ctx = repl::Session {
                client,
                json: cli.json,
                node: cli.node.clone(),
                token: cli.token.clone(),
            };
            if std::io::stdin().is_terminal() {
                repl::interactive(ctx).await
            } else {
                repl::script(ctx).await
            }
        }
    }
}

/// Bench clients open their own connections to the same node with the same token.
pub fn with_bench_target(cmd: Command, node: &str, token: Option<&str>) -> Command {
    match cmd {
        Command::Bench(mut args) => {
            args.url = node.to_string();
            args.token = token.map(str::to_string);
            Command::Bench(args)
        }
        other => other,
    }
}

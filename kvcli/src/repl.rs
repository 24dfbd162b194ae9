//! Commands read line by line: script mode (standard input is not a terminal) and the
//! interactive REPL. Both use the syntax of the one-shot commands, without the global options.

use std::io::BufRead;

use clap::Parser;

use crate::client::Client;
use crate::{commands, exit_code, with_bench_target, words, Line};

/// What every line runs with.
pub struct Session {
    /// The connection to the node.
    pub client: Client,
    /// Print JSON documents.
    pub json: bool,
    /// The node's URL (for bench clients).
    pub node: String,
    /// The token (for bench clients).
    pub token: Option<String>,
}

enum LineResult {
    Ok,
    Empty,
    Failed(u8),
}

async fn run_line(s: &Session, line: &str) -> LineResult {
    let words = match words::split(line) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("kvcli: {e}");
            return LineResult::Failed(2);
        }
    };
    if words.is_empty() || words[0].starts_with('#') {
        return LineResult::Empty;
    }
    let parsed = match Line::try_parse_from(&words) {
        Ok(p) => p,
        Err(e) => {
            // Help and usage errors: clap's own text, on stderr for errors.
            let text = e.render().to_string();
            if e.use_stderr() {
                for l in text.lines().filter(|l| !l.trim().is_empty()).take(1) {
                    eprintln!("kvcli: {}", l.trim_start_matches("error: "));
                }
                return LineResult::Failed(2);
            }
            print!("{text}");
            return LineResult::Ok;
        }
    };
    let cmd = with_bench_target(parsed.command, &s.node, s.token.as_deref());
    match commands::run(&s.client, cmd, s.json).await {
        Ok(()) => LineResult::Ok,
        Err(e) => {
            eprintln!("kvcli: {e}");
            LineResult::Failed(exit_code(&e))
        }
    }
}

/// Script mode: every line of standard input in order; a failed line is reported and the next
/// one runs; the status is that of the last failure (0 when none failed).
pub async fn script(s: Session) -> u8 {
    let mut status = 0;
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                eprintln!("kvcli: cannot read standard input: {e}");
                return 2;
            }
        };
        if let LineResult::Failed(code) = run_line(&s, &line).await {
            status = code;
        }
    }
    status
}

/// The interactive REPL, with line editing and a history kept in the user's data directory.
pub async fn interactive(s: Session) -> u8 {
    let mut editor = match rustyline::DefaultEditor::new() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("kvcli: cannot start the line editor: {e}");
            return 2;
        }
    };
    let history = history_path();
    if let Some(h) = &history {
        let _ = editor.load_history(h);
    }
    println!("connected to {}; type help, or quit", s.node);
    loop {
        match editor.readline("kv> ") {
            Ok(line) => {
                let trimmed = line.trim();
                if trimmed.is_empty() {
                    continue;
                }
                let _ = editor.add_history_entry(trimmed);
                match trimmed {
                    "quit" | "exit" => break,
                    "help" => {
                        let _ = run_line(&s, "help").await;
                        continue;
                    }
                    _ => {}
                }
                let _ = run_line(&s, trimmed).await;
            }
            Err(rustyline::error::ReadlineError::Interrupted) => continue,
            Err(_) => break,
        }
    }
    if let Some(h) = &history {
        if let Some(dir) = h.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let _ = editor.save_history(h);
    }
    0
}

fn history_path() -> Option<std::path::PathBuf> {
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".local/share"))
        })?;
    Some(base.join("kvcli").join("history"))
}

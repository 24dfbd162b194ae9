//! Commands read line by line: script mode (standard input is not a terminal) and the
//! interactive REPL. Both use the syntax of the one-shot commands, without the global options,
//! plus `help [COMMAND]` and `quit`.
//!
//! The REPL adds line editing (rustyline), a history file in the user's data directory, Tab
//! completion (commands, flags, flag values, member ids for `metrics`, keys used in the
//! session), inline hints of the arguments still to type, and a memory of contexts: a put or
//! delete without `--context` uses the context of the last get (or write) of that key in the
//! session, so get -> edit -> put replaces what was read instead of adding a sibling.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::io::BufRead;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use clap::{CommandFactory, Parser};
use kv_core::wire::ClientOp;
use rustyline::completion::{Completer, Pair};
use rustyline::highlight::{CmdKind, Highlighter};
use rustyline::hint::Hinter;
use rustyline::history::DefaultHistory;
use rustyline::validate::Validator;
use rustyline::{CompletionType, Config, Context, Editor, Helper};

use crate::client::Client;
use crate::commands::{self, Env};
use crate::style::{error_line, Style};
use crate::{exit_code, usage_error_line, words, Line};

/// What every line runs with.
pub struct Session {
    /// The connection to the node; replaced when it ends (see [`Session::client`]).
    pub client: Mutex<Client>,
    /// Output settings and, in the REPL, the memory of contexts.
    pub env: Env,
}

impl Session {
    /// The connection, opened again first if the node closed it (a restarted node), so a
    /// long session outlives the connection it started with. A command is never retried: a
    /// write that may have been applied is not sent twice.
    async fn client(&self) -> Client {
        let current = lock(&self.client).clone();
        if !current.is_closed() {
            return current;
        }
        match Client::connect(&self.env.node, self.env.token.as_deref(), self.env.timeout).await {
            Ok(fresh) => {
                eprintln!(
                    "{}",
                    Style::stderr().yellow(&format!(
                        "kvcli: the connection had closed; reconnected to {}",
                        self.env.node
                    ))
                );
                *lock(&self.client) = fresh.clone();
                fresh
            }
            // The command will fail on the closed connection and say the node is unreachable.
            Err(_) => current,
        }
    }
}

enum LineResult {
    Ok,
    Empty,
    Quit,
    Failed(u8),
}

/// Words that are not commands but lines the REPL and script mode understand.
const LINE_WORDS: [&str; 3] = ["help", "quit", "exit"];

/// Prints a help text; with `--json`, as one document `{"help": TEXT}` on one line, so that
/// script mode's output stays one JSON document per line.
fn print_help(text: &str, json: bool) {
    if json {
        println!("{}", serde_json::json!({ "help": text }));
    } else {
        print!("{text}");
    }
}

async fn run_line(s: &Session, line: &str) -> LineResult {
    let words = match words::split(line) {
        Ok(w) => w,
        Err(e) => {
            error_line(&e);
            return LineResult::Failed(2);
        }
    };
    if words.is_empty() || words[0].starts_with('#') {
        return LineResult::Empty;
    }
    match words[0].as_str() {
        "quit" | "exit" => return LineResult::Quit,
        "help" => {
            return match help_text(words.get(1).map(String::as_str), s.env.out) {
                Ok(t) => {
                    print_help(&t, s.env.json);
                    LineResult::Ok
                }
                Err(e) => {
                    error_line(&e);
                    LineResult::Failed(2)
                }
            };
        }
        _ => {}
    }
    let parsed = match Line::try_parse_from(&words) {
        Ok(p) => p,
        Err(e) => {
            if e.use_stderr() {
                error_line(&format!(
                    "{} (help {} for usage)",
                    shortened(&usage_error_line(&e)),
                    if commands_list().iter().any(|(n, _)| *n == words[0]) {
                        words[0].as_str()
                    } else {
                        "lists the commands; help COMMAND"
                    }
                ));
                return LineResult::Failed(2);
            }
            // `COMMAND --help`: clap's own text.
            print_help(&e.render().to_string(), s.env.json);
            return LineResult::Ok;
        }
    };
    let client = s.client().await;
    match commands::run(&client, parsed.command, &s.env).await {
        Ok(()) => LineResult::Ok,
        Err(e) => {
            error_line(&e.to_string());
            LineResult::Failed(exit_code(&e))
        }
    }
}

/// Every command with its one-line description.
fn commands_list() -> Vec<(String, String)> {
    Line::command()
        .get_subcommands()
        .map(|c| {
            (
                c.get_name().to_string(),
                c.get_about().map(|a| a.to_string()).unwrap_or_default(),
            )
        })
        .collect()
}

/// `help` (every command) or `help COMMAND` (its flags and arguments).
fn help_text(cmd: Option<&str>, st: Style) -> Result<String, String> {
    use std::fmt::Write as _;
    match cmd {
        None => {
            let mut out = String::new();
            let _ = writeln!(out, "{}", st.bold("Commands (help COMMAND for details):"));
            let list = commands_list();
            let width = list.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
            for (name, about) in &list {
                let first = about.lines().next().unwrap_or("");
                let _ = writeln!(out, "  {name:<width$}  {first}");
            }
            let _ = writeln!(out, "  {:<width$}  this list, or help COMMAND", "help");
            let _ = writeln!(out, "  {:<width$}  leave (also Ctrl-D)", "quit");
            let _ = writeln!(
                out,
                "{}",
                st.bold("Quoting: put k \"two words\", 'single', or back\\ slash.")
            );
            let _ = writeln!(
                out,
                "In the REPL a put or delete without --context uses the context of your last get of the key \
                 (it says so); --blind writes without it. Tab completes commands, flags, member ids and keys; \
                 Up/Down and Ctrl-R search the history."
            );
            Ok(out)
        }
        Some(name) => {
            let mut root = Line::command();
            root.build();
            let sub = root
                .find_subcommand_mut(name)
                .ok_or_else(|| format!("help: no command named {name} (help lists them)"))?;
            Ok(sub.render_long_help().to_string())
        }
    }
}

/// Script mode: every line of standard input in order; a failed line is reported and the next
/// one runs; the status is that of the last failure (0 when none failed).
pub async fn script(s: Session) -> u8 {
    let mut status = 0;
    let mut stdin = std::io::stdin().lock();
    let mut bytes = Vec::new();
    for number in 1.. {
        bytes.clear();
        match stdin.read_until(b'\n', &mut bytes) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                error_line(&format!("cannot read standard input: {e}"));
                return 2;
            }
        }
        // A line that is not UTF-8 is a failed line like any other: reported, and the next
        // one runs (it used to end the script).
        let Ok(text) = std::str::from_utf8(&bytes) else {
            error_line(&format!("line {number} is not valid UTF-8 text; skipped"));
            status = 2;
            continue;
        };
        let line = text.trim_end_matches(['\n', '\r']);
        match run_line(&s, line).await {
            LineResult::Failed(code) => status = code,
            LineResult::Quit => break,
            LineResult::Ok | LineResult::Empty => {}
        }
    }
    status
}

/// An error line about a script line cut to a readable length (clap echoes the word it did
/// not understand, which in a script can be a whole line of junk).
fn shortened(line: &str) -> String {
    const SHOWN: usize = 200;
    match line.char_indices().nth(SHOWN) {
        Some((cut, _)) => format!("{}... ({} bytes)", &line[..cut], line.len()),
        None => line.to_string(),
    }
}

/// Where the REPL keeps its history: `$XDG_DATA_HOME/kvcli/history`, else
/// `~/.local/share/kvcli/history`.
pub fn history_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))?;
    Some(base.join("kvcli").join("history"))
}

/// The interactive REPL.
pub async fn interactive(s: Session) -> u8 {
    let helper = KvHelper::new(s.env.out.on || Style::stderr().on);
    let ids = helper.node_ids.clone();
    let keys = helper.keys.clone();
    let config = Config::builder()
        .auto_add_history(false)
        .max_history_size(1000)
        .and_then(|b| b.history_ignore_dups(true))
        .map(|b| b.completion_type(CompletionType::List).build());
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            error_line(&format!("cannot configure the line editor: {e}"));
            return 2;
        }
    };
    let mut editor: Editor<KvHelper, DefaultHistory> = match Editor::with_config(config) {
        Ok(e) => e,
        Err(e) => {
            error_line(&format!("cannot start the line editor: {e}"));
            return 2;
        }
    };
    editor.set_helper(Some(helper));
    let history = history_path();
    if let Some(h) = &history {
        if let Some(dir) = h.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let _ = editor.load_history(h);
    }
    let client = s.client().await;
    let who = match client.request(&ClientOp::Ping).await {
        Ok(v) => format!(" (node {})", v["node"].as_str().unwrap_or("?")),
        Err(_) => String::new(),
    };
    refresh_ids(&client, &ids).await;
    println!(
        "connected to {}{who}; help lists the commands, Tab completes, quit or Ctrl-D leaves",
        s.env.node
    );
    loop {
        match editor.readline("kv> ") {
            Ok(line) => {
                let trimmed = line.trim();
                if trimmed.is_empty() {
                    continue;
                }
                let _ = editor.add_history_entry(trimmed);
                if let Some(h) = &history {
                    // Saved after every line so a killed session keeps what it typed.
                    let _ = editor.save_history(h);
                }
                if let Ok(w) = words::split(trimmed) {
                    if matches!(
                        w.first().map(String::as_str),
                        Some("get" | "put" | "delete" | "resolve" | "incr")
                    ) {
                        if let Some(k) = w.get(1) {
                            lock(&keys).insert(k.clone());
                        }
                    }
                }
                // Ctrl-C while a command runs cancels it, not the session.
                // bench handles Ctrl-C itself, to report what it measured.
                let result = if trimmed.split_whitespace().next() == Some("bench") {
                    run_line(&s, trimmed).await
                } else {
                    tokio::select! {
                        r = run_line(&s, trimmed) => r,
                        _ = tokio::signal::ctrl_c() => {
                            error_line("interrupted");
                            LineResult::Failed(130)
                        }
                    }
                };
                match result {
                    LineResult::Quit => break,
                    _ if trimmed.starts_with("status") => {
                        refresh_ids(&s.client().await, &ids).await
                    }
                    _ => {}
                }
            }
            Err(rustyline::error::ReadlineError::Interrupted) => continue,
            Err(_) => break,
        }
    }
    if let Some(h) = &history {
        let _ = editor.save_history(h);
    }
    0
}

async fn refresh_ids(client: &Client, ids: &Arc<Mutex<Vec<String>>>) {
    if let Ok(v) = client.request(&ClientOp::Ring { key: None }).await {
        let list: Vec<String> = v["nodes"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|n| n["id"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        *lock(ids) = list;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One command's shape, for completion and hints.
struct Spec {
    name: String,
    /// Positional arguments in order (`KEY`, `VALUE`).
    positionals: Vec<String>,
    /// `--flag` and its value name when it takes one.
    flags: Vec<(String, Option<String>)>,
    /// The possible values of flags that have a fixed set (`--workload`).
    choices: Vec<(String, Vec<String>)>,
}

fn specs() -> Vec<Spec> {
    Line::command()
        .get_subcommands()
        .map(|c| {
            let mut positionals = Vec::new();
            let mut flags = Vec::new();
            let mut choices = Vec::new();
            for a in c.get_arguments() {
                if a.get_id() == "help" {
                    continue;
                }
                let value_name = a
                    .get_value_names()
                    .and_then(|v| v.first().map(|s| s.to_string()))
                    .unwrap_or_else(|| a.get_id().to_string().to_uppercase());
                match a.get_long() {
                    None => positionals.push(value_name),
                    Some(long) => {
                        let takes = a.get_action().takes_values();
                        let flag = format!("--{long}");
                        let values: Vec<String> = a
                            .get_possible_values()
                            .iter()
                            .map(|p| p.get_name().to_string())
                            .collect();
                        if takes && !values.is_empty() {
                            choices.push((flag.clone(), values));
                        }
                        flags.push((flag, takes.then_some(value_name)));
                    }
                }
            }
            Spec {
                name: c.get_name().to_string(),
                positionals,
                flags,
                choices,
            }
        })
        .collect()
}

/// rustyline's helper: completion, hints and their colour.
struct KvHelper {
    specs: Vec<Spec>,
    color: bool,
    /// Member ids, refreshed at start and after `status`.
    node_ids: Arc<Mutex<Vec<String>>>,
    /// Keys used in this session.
    keys: Arc<Mutex<BTreeSet<String>>>,
}

impl KvHelper {
    fn new(color: bool) -> KvHelper {
        KvHelper {
            specs: specs(),
            color,
            node_ids: Arc::default(),
            keys: Arc::default(),
        }
    }

    fn spec(&self, name: &str) -> Option<&Spec> {
        self.specs.iter().find(|s| s.name == name)
    }

    fn command_names(&self) -> impl Iterator<Item = &str> {
        self.specs
            .iter()
            .map(|s| s.name.as_str())
            .chain(LINE_WORDS.iter().copied())
    }

    /// Candidates for the word `cur`, after the complete words `before`.
    fn candidates(&self, before: &[&str], cur: &str) -> Vec<String> {
        let Some(&cmd) = before.first() else {
            return self
                .command_names()
                .filter(|n| n.starts_with(cur))
                .map(str::to_string)
                .collect();
        };
        if cmd == "help" {
            return if before.len() == 1 {
                self.specs
                    .iter()
                    .map(|s| s.name.clone())
                    .filter(|n| n.starts_with(cur))
                    .collect()
            } else {
                Vec::new()
            };
        }
        let Some(spec) = self.spec(cmd) else {
            return Vec::new();
        };
        let prev = before.last().copied().unwrap_or("");
        if let Some((_, values)) = spec.choices.iter().find(|(f, _)| f == prev) {
            return values
                .iter()
                .filter(|v| v.starts_with(cur))
                .cloned()
                .collect();
        }
        if spec.flags.iter().any(|(f, v)| f == prev && v.is_some()) {
            return Vec::new();
        }
        if cur.starts_with('-') {
            return spec
                .flags
                .iter()
                .map(|(f, _)| f.clone())
                .filter(|f| f.starts_with(cur) && !before.contains(&f.as_str()))
                .collect();
        }
        let position = positional_count(spec, &before[1..]);
        let pool: Vec<String> = match (cmd, position) {
            ("metrics", 0) => lock(&self.node_ids).clone(),
            ("get" | "put" | "delete" | "resolve" | "incr", 0) => {
                lock(&self.keys).iter().cloned().collect()
            }
            _ => Vec::new(),
        };
        pool.into_iter().filter(|c| c.starts_with(cur)).collect()
    }

    /// The hint after `line` (the cursor at its end): the rest of a command name, or the
    /// arguments still to type.
    fn hint_for(&self, line: &str) -> Option<String> {
        let ends_with_space = line.ends_with(char::is_whitespace);
        let words: Vec<&str> = line.split_whitespace().collect();
        let first = *words.first()?;
        if words.len() == 1 && !ends_with_space {
            let mut matches = self.command_names().filter(|n| n.starts_with(first));
            let m = matches.next()?;
            return (matches.next().is_none() && m.len() > first.len())
                .then(|| m[first.len()..].to_string());
        }
        let spec = self.spec(first)?;
        let typed = if ends_with_space {
            &words[1..]
        } else {
            &words[1..words.len() - 1]
        };
        let mut parts: Vec<String> = spec
            .positionals
            .iter()
            .skip(
                positional_count(spec, typed)
                    + usize::from(!ends_with_space && !words[words.len() - 1].starts_with('-')),
            )
            .cloned()
            .collect();
        for (f, v) in &spec.flags {
            if !words.contains(&f.as_str()) {
                parts.push(match v {
                    Some(v) => format!("[{f} {v}]"),
                    None => format!("[{f}]"),
                });
            }
        }
        if parts.is_empty() {
            return None;
        }
        let text = parts.join(" ");
        Some(if ends_with_space {
            text
        } else {
            format!(" {text}")
        })
    }
}

/// How many positional arguments `words` (after the command name) already hold.
fn positional_count(spec: &Spec, words: &[&str]) -> usize {
    let mut n = 0;
    let mut skip_value = false;
    for w in words {
        if skip_value {
            skip_value = false;
        } else if w.starts_with("--") {
            skip_value = spec.flags.iter().any(|(f, v)| f == w && v.is_some());
        } else {
            n += 1;
        }
    }
    n
}

impl Completer for KvHelper {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let before = &line[..pos];
        let start = before.rfind(char::is_whitespace).map_or(0, |i| {
            i + before[i..].chars().next().map_or(1, char::len_utf8)
        });
        let words: Vec<&str> = before[..start].split_whitespace().collect();
        let found = self.candidates(&words, &before[start..]);
        let single = found.len() == 1;
        let pairs = found
            .into_iter()
            .map(|c| Pair {
                replacement: if single { format!("{c} ") } else { c.clone() },
                display: c,
            })
            .collect();
        Ok((start, pairs))
    }
}

/// An inline hint: the rest of a command name (Right arrow accepts it) or the arguments still
/// to type (shown only: accepting placeholders would insert `KEY` into the line).
struct KvHint {
    display: String,
    accept: bool,
}

impl rustyline::hint::Hint for KvHint {
    fn display(&self) -> &str {
        &self.display
    }

    fn completion(&self) -> Option<&str> {
        self.accept.then_some(self.display.as_str())
    }
}

impl Hinter for KvHelper {
    type Hint = KvHint;

    fn hint(&self, line: &str, pos: usize, _ctx: &Context<'_>) -> Option<KvHint> {
        if pos < line.len() || line.trim().is_empty() {
            return None;
        }
        let display = self.hint_for(line)?;
        // Only the rest of a command name is text to accept.
        let accept = !line.contains(char::is_whitespace);
        Some(KvHint { display, accept })
    }
}

impl Highlighter for KvHelper {
    fn highlight_prompt<'b, 's: 'b, 'p: 'b>(
        &'s self,
        prompt: &'p str,
        _default: bool,
    ) -> Cow<'b, str> {
        if self.color {
            Cow::Owned(format!("\x1b[1;32m{prompt}\x1b[0m"))
        } else {
            Cow::Borrowed(prompt)
        }
    }

    fn highlight_hint<'h>(&self, hint: &'h str) -> Cow<'h, str> {
        if self.color {
            Cow::Owned(format!("\x1b[2m{hint}\x1b[0m"))
        } else {
            Cow::Borrowed(hint)
        }
    }

    fn highlight_char(&self, _line: &str, _pos: usize, _kind: CmdKind) -> bool {
        false
    }
}

impl Validator for KvHelper {}

impl Helper for KvHelper {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completes_commands_flags_values_and_ids() {
        let h = KvHelper::new(false);
        assert_eq!(h.candidates(&[], "ge"), ["get"]);
        assert!(h.candidates(&[], "").contains(&"resolve".to_string()));
        assert_eq!(h.candidates(&["help"], "ben"), ["bench"]);
        assert_eq!(
            h.candidates(&["bench", "--workload"], "")[..3],
            ["put", "get", "a"]
        );
        assert_eq!(h.candidates(&["bench"], "--distr"), ["--distribution"]);
        assert_eq!(h.candidates(&["put", "k", "v"], "--bl"), ["--blind"]);
        *lock(&h.node_ids) = vec!["n1".into(), "n2".into()];
        assert_eq!(h.candidates(&["metrics"], "n"), ["n1", "n2"]);
        lock(&h.keys).insert("greeting".into());
        assert_eq!(h.candidates(&["get"], "gr"), ["greeting"]);
        assert!(h.candidates(&["get", "greeting"], "gr").is_empty());
    }

    #[test]
    fn hints_show_what_is_left_to_type() {
        let h = KvHelper::new(false);
        assert_eq!(h.hint_for("res").as_deref(), Some("olve"));
        let put = h.hint_for("put ").unwrap();
        assert!(put.starts_with("KEY VALUE [--context CONTEXT]"), "{put}");
        let put = h.hint_for("put k").unwrap();
        assert!(put.starts_with(" VALUE"), "{put}");
        let put = h.hint_for("put k v --blind ").unwrap();
        assert!(!put.contains("VALUE") && !put.contains("--blind"), "{put}");
        assert_eq!(h.hint_for("frob"), None);
        // Right arrow may accept the rest of a command name, never the placeholders.
        let history = DefaultHistory::new();
        let ctx = Context::new(&history);
        let hint = h.hint("res", 3, &ctx).unwrap();
        assert_eq!(rustyline::hint::Hint::completion(&hint), Some("olve"));
        let hint = h.hint("put ", 4, &ctx).unwrap();
        assert_eq!(rustyline::hint::Hint::completion(&hint), None);
    }

    #[test]
    fn help_lists_commands_and_explains_one() {
        let st = Style { on: false };
        let all = help_text(None, st).unwrap();
        for c in [
            "get", "put", "resolve", "status", "ring", "metrics", "bench", "import",
        ] {
            assert!(all.contains(c), "{c} missing from help:\n{all}");
        }
        let put = help_text(Some("put"), st).unwrap();
        assert!(
            put.contains("--blind") && put.contains("--context"),
            "{put}"
        );
        assert!(help_text(Some("frob"), st).is_err());
    }
}

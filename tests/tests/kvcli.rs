//! kvcli as scripts use it: one-shot commands with --json, script mode from standard input,
//! exit codes and one-line errors.

use kv_tests::{kvcli, kvcli_with_stdin, Cluster, ClusterOpts};
use serde_json::Value;

fn json(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

#[test]
fn one_shot_commands_and_script_mode() {
    let cluster = Cluster::start(3, ClusterOpts::default());
    let node = cluster.nodes[0].url();
    let n = ["--node", node.as_str()];

    let (code, out, err) = kvcli(&[n[0], n[1], "--json", "put", "greeting", "hello world"]);
    assert_eq!(code, 0, "{err}");
    let put = json(out.trim());
    assert_eq!(put["ok"], true);
    assert_eq!(put["key"], "greeting");
    assert!(
        put["context"].as_str().is_some_and(|c| !c.is_empty()),
        "{put}"
    );

    let (code, out, _) = kvcli(&[n[0], n[1], "--json", "get", "greeting"]);
    assert_eq!(code, 0);
    let get = json(out.trim());
    assert_eq!(get["found"], true);
    assert_eq!(get["values"], serde_json::json!(["hello world"]));

    let (code, out, _) = kvcli(&[n[0], n[1], "get", "greeting"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("hello world\n"), "{out}");

    // keys: a glob over every key of the cluster.
    for k in ["user:1", "user:2", "order:1"] {
        let (code, _, err) = kvcli(&[n[0], n[1], "put", k, "v"]);
        assert_eq!(code, 0, "{err}");
    }
    let (code, out, err) = kvcli(&[n[0], n[1], "keys", "user:*"]);
    assert_eq!(code, 0, "{err}");
    let mut listed: Vec<&str> = out.lines().collect();
    listed.sort();
    assert_eq!(listed, ["user:1", "user:2"]);
    let (code, out, _) = kvcli(&[n[0], n[1], "--json", "keys"]);
    assert_eq!(code, 0);
    assert_eq!(json(out.trim())["count"], 4, "{out}");
    let (code, out, _) = kvcli(&[n[0], n[1], "--json", "keys", "*:1", "--limit", "1"]);
    assert_eq!(code, 0);
    assert_eq!(json(out.trim())["count"], 1, "{out}");

    let (code, out, _) = kvcli(&[n[0], n[1], "--json", "get", "absent"]);
    assert_eq!(code, 0, "an absent key is not an error");
    assert_eq!(json(out.trim())["found"], false);

    let (code, out, _) = kvcli(&[n[0], n[1], "--json", "status"]);
    assert_eq!(code, 0);
    let status = json(out.trim());
    let nodes = status["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    for node in nodes {
        for field in ["id", "addr", "dc", "rack", "state", "keys", "hints_pending"] {
            assert!(node.get(field).is_some(), "status lacks {field}: {node}");
        }
        assert_eq!(node["state"], "up");
    }

    let (code, out, _) = kvcli(&[n[0], n[1], "--json", "ring", "--key", "greeting"]);
    assert_eq!(code, 0);
    assert_eq!(
        json(out.trim())["preference_list"]
            .as_array()
            .unwrap()
            .len(),
        3
    );

    // Delete with the context of a read.
    let ctx = get["context"].as_str().unwrap().to_string();
    let (code, out, _) = kvcli(&[
        n[0],
        n[1],
        "--json",
        "delete",
        "greeting",
        "--context",
        &ctx,
    ]);
    assert_eq!(code, 0);
    assert_eq!(json(out.trim())["ok"], true);
    let (_, out, _) = kvcli(&[n[0], n[1], "--json", "get", "greeting"]);
    assert_eq!(json(out.trim())["found"], false);

    // Without a context, one-shot: two blind puts are siblings, and the delete removes both.
    for v in ["one", "two"] {
        let (code, _, _) = kvcli(&[n[0], n[1], "put", "twice", v]);
        assert_eq!(code, 0);
    }
    let (_, out, _) = kvcli(&[n[0], n[1], "--json", "get", "twice"]);
    assert_eq!(
        json(out.trim())["values"].as_array().unwrap().len(),
        2,
        "{out}"
    );
    let (code, _, err) = kvcli(&[n[0], n[1], "delete", "twice"]);
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = kvcli(&[n[0], n[1], "--json", "get", "twice"]);
    assert_eq!(json(out.trim())["found"], false, "{out}");

    // Script mode: one JSON document per line, a failed line reported and the rest run.
    // A word starting with `#` begins a comment, at the start of a line or after a command;
    // `help` is a JSON document too; a negative number is a value, not a flag.
    let script = "put a 1 # the first\nput b \"two words\"\nfrobnicate\nget b\n# a comment\nget a\nhelp\nput neg -5\nget neg\n";
    let (code, out, err) = kvcli_with_stdin(&[n[0], n[1], "--json"], Some(script));
    assert_ne!(code, 0, "a failed line makes the exit status non-zero");
    let lines: Vec<Value> = out.lines().map(json).collect();
    assert_eq!(lines.len(), 7, "{out}");
    assert_eq!(lines[2]["values"], serde_json::json!(["two words"]));
    assert_eq!(lines[3]["values"], serde_json::json!(["1"]));
    assert!(
        lines[4]["help"].as_str().is_some_and(|h| h.contains("put")),
        "{out}"
    );
    assert_eq!(lines[6]["values"], serde_json::json!(["-5"]));
    assert_eq!(err.lines().count(), 1, "one line per failure: {err}");
    assert!(err.contains("frobnicate"), "{err}");

    let (code, _, _) = kvcli_with_stdin(&[n[0], n[1]], Some("put c 3\nget c\n"));
    assert_eq!(code, 0);

    // A line that is not UTF-8, or a line of junk, fails alone, in one readable line; the
    // script goes on.
    let mut script = b"put u1 a\nput u2 \xff\xfe\n".to_vec();
    script.extend_from_slice(format!("{}\nput u3 c\n", "x".repeat(100_000)).as_bytes());
    let mut child = std::process::Command::new(kv_tests::kvcli_bin())
        .args([n[0], n[1]])
        .env_remove("KV_NODE")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), &script).unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert_eq!(err.lines().count(), 2, "{err}");
    assert!(err.contains("line 2 is not valid UTF-8"), "{err}");
    assert!(err.lines().all(|l| l.len() < 400), "{err}");
    let (_, out, _) = kvcli(&[n[0], n[1], "get", "u3"]);
    assert!(out.starts_with("c\n"), "the line after them ran: {out}");

    // keys --limit counts in both outputs, 0 included.
    let (_, out, _) = kvcli(&[n[0], n[1], "--json", "keys", "--limit", "0"]);
    assert_eq!(json(out.trim())["count"], 0, "{out}");
    let (_, out, _) = kvcli(&[n[0], n[1], "keys", "--limit", "2"]);
    assert_eq!(out.lines().count(), 2, "{out}");

    // Pending hints are a number, 0 included.
    let (code, out, err) = kvcli(&[n[0], n[1], "--json", "metrics"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(out.trim())["hints_pending"], 0, "{out}");
}

#[test]
fn errors_are_one_line_with_meaningful_exit_codes() {
    let cluster = Cluster::start(1, ClusterOpts::one_replica());
    let node = cluster.nodes[0].url();

    let (code, _, err) = kvcli(&["--node", "ws://127.0.0.1:1", "get", "k"]);
    assert_eq!(code, 3, "unreachable node: {err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("unreachable"), "{err}");

    let big = "k".repeat(2000);
    let (code, _, err) = kvcli(&["--node", &node, "put", &big, "v"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("too_large"), "{err}");

    let (code, _, err) = kvcli(&["--node", &node, "put", "k", "v", "--w", "2"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("exceeds"), "{err}");

    // A request over the frame limit (2 MiB) is refused as too large at once, not left to
    // time out: the refusal carries the request's id. Over the WebSocket layer's own bound
    // (8 MiB) the node closes the connection, and says why first.
    for size in [2 * 1024 * 1024 + 10, 9 * 1024 * 1024] {
        let line = format!("put huge {}\n", "v".repeat(size));
        let (code, _, err) = kvcli_with_stdin(&["--node", &node, "--timeout", "20"], Some(&line));
        assert_eq!(code, 1, "{err}");
        assert!(err.starts_with("kvcli: too_large: "), "{size}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }

    // Bad global options are usage errors (exit 2) with one line, not a panic or a failed
    // connection.
    for args in [
        ["--timeout", "1e20"],
        ["--timeout", "0"],
        ["--node", "http://127.0.0.1:7070"],
        ["--node", "127.0.0.1:99999"],
        ["--node", "ws://:7070"],
    ] {
        let (code, _, err) = kvcli(&[args[0], args[1], "get", "k"]);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    // A value that looks like a flag: clap's way out is in the one line.
    let (code, _, err) = kvcli(&["--node", &node, "put", "k", "-x"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("'-- -x'"), "{err}");
    let (code, _, err) = kvcli(&["--node", &node, "put", "k", "--", "-x"]);
    assert_eq!(code, 0, "{err}");

    let (code, _, _) = kvcli(&["--node", &node, "get"]);
    assert_eq!(code, 2, "missing argument is a usage error");
    let (code, _, _) = kvcli(&["--node", &node, "frobnicate"]);
    assert_eq!(code, 2, "unknown command is a usage error");
}

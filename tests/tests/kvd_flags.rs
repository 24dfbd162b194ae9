//! What `kvd` says when it is started wrongly, and the shape of what it prints: every usage
//! error of the node command and its subcommands is one line on stderr with exit status 2, a
//! bad `--config` file is one line naming the file and the place, `kvd bench-storage` refuses
//! what it cannot run and cleans up after Ctrl-C, and `/metrics` declares every family once.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use kv_tests::{kvd_bin, Cluster, ClusterOpts};

/// Runs `kvd args` to its end (each of these exits at once; the guard is against a hang).
fn kvd(args: &[&str]) -> Output {
    kvd_in(args, None)
}

fn kvd_in(args: &[&str], tmpdir: Option<&Path>) -> Output {
    let mut cmd = Command::new(kvd_bin());
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(dir) = tmpdir {
        cmd.env("TMPDIR", dir);
    }
    let mut child = cmd.spawn().expect("start kvd");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("wait for kvd").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("kvd {args:?} did not end");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("kvd output")
}

/// Asserts that `kvd args` failed with status `code` and exactly one line on stderr, starting
/// `kvd: ` and holding every one of `says`; returns that line.
fn one_line_error(args: &[&str], code: i32, says: &[&str]) -> String {
    let out = kvd(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "kvd {args:?}: {err}");
    assert_eq!(
        err.lines().count(),
        1,
        "kvd {args:?}: one line, not:\n{err}"
    );
    assert!(err.starts_with("kvd: "), "kvd {args:?}: {err}");
    for s in says {
        assert!(err.contains(s), "kvd {args:?}: {err:?} should say {s:?}");
    }
    err
}

#[test]
fn every_usage_error_is_one_line_with_status_2() {
    one_line_error(&["--sync", "bogus"], 2, &["'bogus'", "--sync"]);
    one_line_error(&["--no-such-flag"], 2, &["--no-such-flag"]);
    // clap's tip (a similar flag) is kept, on the same line.
    one_line_error(&["--synk", "always"], 2, &["--synk", "--sync"]);
    one_line_error(&["--listen"], 2, &["--listen"]);
    one_line_error(&["no-such-command"], 2, &["no-such-command"]);
    one_line_error(&["dev", "--no-such-flag"], 2, &["--no-such-flag"]);
    one_line_error(&["dev", "--nodes", "many"], 2, &["--nodes", "'many'"]);
    one_line_error(&["bench-storage", "--no-such-flag"], 2, &["--no-such-flag"]);
    one_line_error(&["bench-storage", "--sync", "x"], 2, &["--sync", "'x'"]);
}

#[test]
fn help_and_version_are_printed_whole_with_status_0() {
    for args in [
        &["--help"][..],
        &["--version"],
        &["dev", "--help"],
        &["bench-storage", "--help"],
    ] {
        let out = kvd(args);
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "kvd {args:?}");
        assert!(out.stderr.is_empty(), "kvd {args:?}");
        if args.contains(&"--help") {
            assert!(text.contains("Usage: kvd"), "{text}");
            assert!(text.lines().count() > 5, "{text}");
        } else {
            assert!(text.starts_with("kvd "), "{text}");
        }
    }
}

/// A negative number for a numeric flag is a bad value of that flag (it used to be taken for
/// an unknown flag `-1`).
#[test]
fn a_negative_number_is_an_invalid_value_of_its_flag() {
    for (args, flag) in [
        (&["--weight", "-1"][..], "--weight"),
        (&["--n", "-3"], "--n"),
        (&["--memtable-mb", "-8"], "--memtable-mb"),
        (&["dev", "--nodes", "-2"], "--nodes"),
        (&["bench-storage", "--num", "-5"], "--num"),
        (&["bench-storage", "--cache-mb", "-1"], "--cache-mb"),
        (&["bench-storage", "--threads", "-1"], "--threads"),
    ] {
        let line = one_line_error(args, 2, &["invalid value", flag, "negative"]);
        assert!(!line.contains("unexpected argument"), "{line}");
    }
}

/// A `--config` file that is not TOML, has an unknown key or a value of the wrong type: one
/// line with the file, the line and column, and the problem.
#[test]
fn a_bad_config_file_is_one_line_naming_the_file_and_the_place() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    for (name, text, place, problem) in [
        (
            "unknown.toml",
            "dc = \"east\"\ncolour = \"blue\"\n",
            "line 2, column 1",
            "colour",
        ),
        (
            "type.toml",
            "weight = \"two\"\n",
            "line 1, column 10",
            "expected u32",
        ),
        ("syntax.toml", "n = 3\nlisten = \n", "line 2", "quoted"),
        ("table.toml", "w = 2\n[x\n", "line 2", "]"),
    ] {
        let file = dir.path().join(name);
        std::fs::write(&file, text).unwrap();
        let file = file.to_str().unwrap();
        let line = one_line_error(
            &["--config", file, "--data-dir", data],
            1,
            &[file, place, problem],
        );
        assert!(!line.contains('^'), "{line}");
    }
    assert!(!Path::new(data).exists(), "nothing was started");
}

/// `--base-port 0` would have every node advertise port 0 and never become ready.
#[test]
fn kvd_dev_refuses_port_0() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("dev");
    one_line_error(
        &["dev", "--base-port", "0", "--dir", d.to_str().unwrap()],
        2,
        &["--base-port", "'0'"],
    );
    assert!(!d.exists(), "nothing was started");
}

/// A flag `kvd dev` passes on that its node refuses: dev reports the node's own one-line
/// reason (it reported the last line of clap's usage text, "For more information, try
/// '--help'.").
#[test]
fn kvd_dev_reports_the_reason_a_node_refused_its_flags() {
    let dir = tempfile::tempdir().unwrap();
    let port = kv_tests::free_port().to_string();
    let d = dir.path().join("dev");
    let line = one_line_error(
        &[
            "dev",
            "--nodes",
            "1",
            "--base-port",
            &port,
            "--sync",
            "bogus",
            "--dir",
            d.to_str().unwrap(),
        ],
        1,
        &["node n1 exited during start", "'bogus'", "--sync"],
    );
    assert!(!line.contains("For more information"), "{line}");
}

#[test]
fn bench_storage_refuses_benchmarks_and_threads_it_cannot_run() {
    one_line_error(
        &["bench-storage", "--benchmarks", ""],
        2,
        &["--benchmarks", "empty"],
    );
    one_line_error(
        &["bench-storage", "--benchmarks", "fillseq,,scan"],
        2,
        &["--benchmarks", "empty"],
    );
    one_line_error(
        &["bench-storage", "--benchmarks", "fillseq,fillsideways"],
        2,
        &["--benchmarks", "fillsideways"],
    );
    one_line_error(
        &["bench-storage", "--threads", "0"],
        2,
        &["--threads", "at least 1"],
    );
    one_line_error(
        &["bench-storage", "--num", "0"],
        2,
        &["--num", "at least 1"],
    );
}

/// A read benchmark that made no probe of a key that could not match has no false-positive
/// rate to give; it printed "NaN%".
#[test]
fn bench_storage_prints_no_nan() {
    let dir = tempfile::tempdir().unwrap();
    let out = kvd_in(
        &[
            "bench-storage",
            "--benchmarks",
            "fillseq,readrandom,readmissing",
            "--num",
            "2000",
        ],
        Some(dir.path()),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("readrandom"), "{err}");
    assert!(!err.contains("NaN"), "{err}");
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(
        left.is_empty(),
        "the temporary database is removed: {left:?}"
    );
}

/// Ctrl-C (or SIGTERM) in the middle of a run removes the run's temporary database (tens of
/// MB were left in /tmp) and exits with 128 + the signal; a `--db` the user gave is kept.
#[test]
fn bench_storage_removes_its_temporary_database_when_interrupted() {
    for (signal, code) in [(libc::SIGINT, 130), (libc::SIGTERM, 143)] {
        let tmp = tempfile::tempdir().unwrap();
        let status = interrupt_bench(tmp.path(), &[], signal, || {
            std::fs::read_dir(tmp.path())
                .unwrap()
                .filter_map(|e| e.ok())
                .any(|e| std::fs::read_dir(e.path()).is_ok_and(|mut d| d.next().is_some()))
        });
        assert_eq!(status.code(), Some(code), "signal {signal}: {status:?}");
        let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
        assert!(left.is_empty(), "signal {signal}: left behind {left:?}");
    }
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("db");
    let db_arg = db.to_str().unwrap().to_string();
    let status = interrupt_bench(tmp.path(), &["--db", &db_arg], libc::SIGINT, || {
        std::fs::read_dir(&db).is_ok_and(|mut d| d.next().is_some())
    });
    assert_eq!(status.code(), Some(130), "{status:?}");
    assert!(db.exists(), "the user's --db is not removed");
}

/// Starts a long `bench-storage` run with TMPDIR=`tmp`, waits until `started` says it is
/// writing, sends `signal` and returns how the process ended.
fn interrupt_bench(
    tmp: &Path,
    extra: &[&str],
    signal: i32,
    started: impl Fn() -> bool,
) -> std::process::ExitStatus {
    let mut child = Command::new(kvd_bin())
        .args([
            "bench-storage",
            "--benchmarks",
            "fillrandom",
            "--num",
            "50000000",
        ])
        .args(extra)
        .env("TMPDIR", tmp)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start kvd bench-storage");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !started() {
        if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            let _ = child.wait();
            panic!("bench-storage did not start writing");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Let it write a little more, then interrupt it.
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: kill(2) on our own child's pid with a valid signal.
    unsafe {
        libc::kill(child.id() as i32, signal);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("bench-storage did not end on signal {signal}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The family a sample belongs to: its own name, or for `_bucket`, `_sum` and `_count` the
/// histogram it is part of.
fn family_of<'a>(sample: &'a str, types: &HashMap<String, String>) -> &'a str {
    if types.contains_key(sample) {
        return sample;
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = sample.strip_suffix(suffix) {
            if types.get(base).is_some_and(|t| t == "histogram") {
                return base;
            }
        }
    }
    sample
}

/// `/metrics` of a real node: every family has exactly one `# HELP` and one `# TYPE` line,
/// both before its first sample, and its samples are together (23 families had no TYPE line
/// and none had HELP). Pending hints show 0 when there are none.
#[test]
fn every_metric_family_is_declared_once_before_its_samples() {
    let cluster = Cluster::start(1, ClusterOpts::one_replica());
    let text = cluster.nodes[0].get("/metrics").expect("GET /metrics");
    let mut types: HashMap<String, String> = HashMap::new();
    let mut helps: HashMap<String, usize> = HashMap::new();
    let mut type_count: HashMap<String, usize> = HashMap::new();
    let mut finished: Vec<String> = Vec::new();
    let mut current: Option<String> = None;
    let mut samples = 0;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            assert!(!help.trim().is_empty(), "empty help: {line}");
            *helps.entry(name.to_string()).or_default() += 1;
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            *type_count.entry(name.to_string()).or_default() += 1;
            types.insert(name.to_string(), kind.to_string());
        } else if !line.is_empty() {
            assert!(!line.starts_with('#'), "unknown comment: {line}");
            let name = line.split(['{', ' ']).next().unwrap_or(line);
            let family = family_of(name, &types).to_string();
            assert!(types.contains_key(&family), "no TYPE before {line}");
            assert_eq!(helps.get(&family), Some(&1), "no HELP before {line}");
            if current.as_deref() != Some(family.as_str()) {
                assert!(
                    !finished.contains(&family),
                    "samples of {family} are split: {line}"
                );
                if let Some(previous) = current.replace(family) {
                    finished.push(previous);
                }
            }
            samples += 1;
        }
    }
    assert!(samples > 50, "{text}");
    for (name, n) in &type_count {
        assert_eq!(*n, 1, "{name} has {n} TYPE lines");
    }
    for (name, n) in &helps {
        assert_eq!(*n, 1, "{name} has {n} HELP lines");
        assert!(types.contains_key(name), "HELP without TYPE: {name}");
    }
    for (name, kind) in [
        ("kv_storage_compactions_total", "counter"),
        ("kv_anti_entropy_rounds_total", "counter"),
        ("kv_tombstones_purged_total", "counter"),
        ("kv_storage_memtable_bytes", "gauge"),
        ("kv_hints_pending_bytes", "gauge"),
        ("kv_hints_pending", "gauge"),
        ("kv_request_duration_seconds", "histogram"),
    ] {
        assert_eq!(types.get(name).map(String::as_str), Some(kind), "{name}");
    }
    assert!(
        text.lines().any(|l| l == "kv_hints_pending_all_targets 0"),
        "{text}"
    );
}

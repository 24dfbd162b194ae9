//! Crash test: a child process writing with `SyncMode::Always` is SIGKILLed at random moments;
//! after each kill the data directory is reopened and every write the child had seen
//! acknowledged must be there, with nothing that was never written.
//!
//! The test binary re-executes itself as the writer child (env `KV_STORAGE_CRASH_CHILD`).
//! `KV_STORAGE_SOAK=1` runs many more rounds.

use std::io::{BufRead, BufReader, Write};
use std::ops::Bound;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use kvd_storage::{Engine, Options, SyncMode, WriteBatch};

const CHILD_ENV: &str = "KV_STORAGE_CRASH_CHILD";

fn opts() -> Options {
    Options {
        sync: SyncMode::Always,
        // Small sizes so flushes and compactions happen while the child is killed.
        memtable_bytes: 32 << 10,
        table_bytes: 32 << 10,
        level1_bytes: 128 << 10,
        level_multiplier: 4,
        l0_compaction_trigger: 2,
        flush_on_close: false,
        ..Options::default()
    }
}

/// The value written for a key: derived from it, so garbage is recognisable.
fn value_for(key: &[u8]) -> Vec<u8> {
    let h = xorshift(key.iter().fold(1469598103934665603u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(1099511628211)
    }));
    let len = (h % 700) as usize;
    let mut v = key.to_vec();
    v.push(b'=');
    v.extend(std::iter::repeat_n((h >> 8) as u8, len));
    v
}

fn xorshift(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

#[test]
fn crash_child_writer() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return; // Only does something when started by the crash test below.
    };
    let round = std::env::var("KV_STORAGE_CRASH_ROUND").unwrap();
    let engine = Arc::new(Engine::open(&dir, opts()).unwrap());
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let e = engine.clone();
            let round = round.clone();
            std::thread::spawn(move || {
                let mut out = std::io::stdout();
                for i in 0u64.. {
                    let mut b = WriteBatch::new();
                    let keys: Vec<Vec<u8>> = (0..(i % 3 + 1))
                        .map(|j| format!("r{round}-t{t}-{i:07}-{j}").into_bytes())
                        .collect();
                    for k in &keys {
                        b.put(k.clone(), value_for(k));
                    }
                    e.write(b).unwrap();
                    let mut line = Vec::new();
                    for k in &keys {
                        line.extend_from_slice(b"ACK ");
                        line.extend_from_slice(k);
                        line.push(b'\n');
                    }
                    let mut lock = out.lock();
                    lock.write_all(&line).unwrap();
                    lock.flush().unwrap();
                    drop(lock);
                    out = std::io::stdout();
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}

#[test]
fn sigkill_at_random_moments_loses_no_acknowledged_write() {
    let soak = std::env::var("KV_STORAGE_SOAK").is_ok();
    let rounds = if soak { 200 } else { 10 };
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut acked: Vec<Vec<u8>> = Vec::new();
    let mut rng = 0x1234_5678_9abc_def1u64 ^ std::process::id() as u64;
    for round in 0..rounds {
        let mut child = Command::new(&exe)
            .args([
                "crash_child_writer",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .env("KV_STORAGE_CRASH_ROUND", round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut keys = Vec::new();
            let mut line = Vec::new();
            loop {
                line.clear();
                match r.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        // A line cut by the kill has no newline: it was not fully reported.
                        if line.ends_with(b"\n") && line.starts_with(b"ACK ") {
                            keys.push(line[4..line.len() - 1].to_vec());
                        }
                    }
                }
            }
            keys
        });
        rng = xorshift(rng);
        std::thread::sleep(Duration::from_millis(150 + rng % 400));
        child.kill().unwrap();
        child.wait().unwrap();
        let new_keys = reader.join().unwrap();
        let first_new = acked.len();
        acked.extend(new_keys);

        let e = Engine::open(dir.path(), opts()).unwrap();
        // Every key acknowledged in this round, plus a sample of older ones, by point lookup.
        let mut check: Vec<&Vec<u8>> = acked[first_new..].iter().collect();
        for _ in 0..500.min(first_new) {
            rng = xorshift(rng);
            check.push(&acked[(rng % first_new as u64) as usize]);
        }
        for k in check {
            let v = e.get(k).unwrap();
            assert_eq!(
                v.as_deref(),
                Some(value_for(k).as_slice()),
                "round {round}: acknowledged key {} lost",
                String::from_utf8_lossy(k)
            );
        }
        // A full scan every few rounds: every acknowledged key present, no garbage anywhere.
        if round % 5 == 4 || round == rounds - 1 {
            let mut present = std::collections::HashSet::new();
            for item in e.scan(Bound::Unbounded, Bound::Unbounded).unwrap() {
                let (k, v) = item.unwrap();
                assert_eq!(
                    v,
                    value_for(&k),
                    "garbage under {}",
                    String::from_utf8_lossy(&k)
                );
                present.insert(k);
            }
            for k in &acked {
                assert!(
                    present.contains(k),
                    "round {round}: acknowledged key {} missing from scan",
                    String::from_utf8_lossy(k)
                );
            }
            if round == rounds - 1 {
                println!(
                    "{rounds} rounds, {} acknowledged keys checked, {} keys present; last recovery: {}",
                    acked.len(),
                    present.len(),
                    e.recovery_report()
                );
            }
        }
        e.close().unwrap();
    }
    assert!(
        acked.len() > 100,
        "the child acknowledged only {} writes",
        acked.len()
    );
}

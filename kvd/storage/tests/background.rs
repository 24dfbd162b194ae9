//! The flush and compaction threads run at a lower CPU priority than the rest of the process
//! (a higher nice value), so requests take the CPU first when it is short; the commit thread,
//! which acknowledged writes wait for, does not.

use std::time::{Duration, Instant};

use kvd_storage::{Engine, Options, SyncMode};

/// The nice value in a /proc stat line.
fn nice_of(stat: &str) -> i64 {
    // Fields after the name in parentheses start at field 3; nice is field 19.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    after.split(' ').nth(16).unwrap().parse().unwrap()
}

/// (name, nice) of every thread of this process.
fn threads() -> Vec<(String, i64)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let path = task.unwrap().path();
        let (Ok(comm), Ok(stat)) = (
            std::fs::read_to_string(path.join("comm")),
            std::fs::read_to_string(path.join("stat")),
        ) else {
            continue; // the thread ended meanwhile
        };
        out.push((comm.trim().to_string(), nice_of(&stat)));
    }
    out
}

fn nices(prefix: &str) -> Vec<i64> {
    let mut v: Vec<i64> = threads()
        .into_iter()
        .filter(|(name, _)| name.starts_with(prefix))
        .map(|(_, nice)| nice)
        .collect();
    v.sort();
    v
}

#[test]
fn background_threads_yield_the_cpu_to_requests() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        sync: SyncMode::Interval,
        background_nice: 10,
        ..Options::default()
    };
    let own = nice_of(&std::fs::read_to_string("/proc/thread-self/stat").unwrap());
    let engine = Engine::open(dir.path(), opts).unwrap();
    // The threads lower themselves as they start.
    let deadline = Instant::now() + Duration::from_secs(10);
    while nices("kvd-storage-flu") != [own + 10] {
        assert!(Instant::now() < deadline, "threads: {:?}", threads());
        std::thread::sleep(Duration::from_millis(10));
    }
    // "kvd-storage-com" is the compaction thread and the commit thread (names are cut to 15
    // bytes): one lowered, one not.
    while nices("kvd-storage-com") != [own, own + 10] {
        assert!(Instant::now() < deadline, "threads: {:?}", threads());
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(nices("kvd-storage-syn"), [own], "{:?}", threads());
    engine.put(b"k", b"v").unwrap();
    engine.flush().unwrap();
    assert_eq!(engine.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
    drop(engine);

    // 0 leaves them alone.
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        background_nice: 0,
        ..Options::default()
    };
    let _engine = Engine::open(dir.path(), opts).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(nices("kvd-storage-flu"), [own], "{:?}", threads());
}

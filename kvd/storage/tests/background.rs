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

#[test]
fn an_operators_compaction_runs_at_the_background_priority() {
    let dir = tempfile::tempdir().unwrap();
    // The purge predicate is asked on the compacting thread: it notes which thread that is.
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let note = seen.clone();
    let opts = Options {
        sync: SyncMode::Interval,
        background_work: false,
        background_nice: 10,
        tombstone_purge: Some(std::sync::Arc::new(move |_k: &[u8], _v: &[u8]| {
            let name = std::fs::read_to_string("/proc/thread-self/comm").unwrap();
            let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
            note.lock()
                .unwrap()
                .push((name.trim().to_string(), nice_of(&stat)));
            false
        })),
        ..Options::default()
    };
    let own = nice_of(&std::fs::read_to_string("/proc/thread-self/stat").unwrap());
    let engine = Engine::open(dir.path(), opts).unwrap();
    for round in 0..3u32 {
        for i in 0..100u32 {
            engine
                .put(
                    format!("k{i:03}").as_bytes(),
                    format!("v{round}").as_bytes(),
                )
                .unwrap();
        }
        engine.flush().unwrap();
    }
    assert!(engine.stats().level_tables[0] > 1);
    engine.compact_in_background().unwrap();
    let s = engine.stats();
    assert_eq!(s.level_tables[0], 0, "{:?}", s.level_tables);
    assert_eq!(s.table_count, 1, "{:?}", s.level_tables);
    assert_eq!(engine.get(b"k042").unwrap().as_deref(), Some(&b"v2"[..]));
    let seen = seen.lock().unwrap();
    assert!(!seen.is_empty(), "the purge predicate was never asked");
    for (name, nice) in seen.iter() {
        assert_eq!(name, "kvd-compact-all");
        assert_eq!(*nice, own + 10);
    }
    // The caller's own priority is untouched.
    let after = nice_of(&std::fs::read_to_string("/proc/thread-self/stat").unwrap());
    assert_eq!(after, own);
}

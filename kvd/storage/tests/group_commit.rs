//! Many blocking writers under `SyncMode::Always`: they share fsyncs, and every one of them is
//! woken when its group is durable (the wake-ups are passed on from writer to writer, so a
//! lost one would leave a writer parked for good).

use std::sync::Arc;
use std::time::Duration;

use kvd_storage::{Engine, Options, SyncMode, WriteBatch};

#[test]
fn many_blocking_writers_share_fsyncs_and_all_return() {
    const WRITERS: usize = 40;
    const EACH: usize = 150;
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        sync: SyncMode::Always,
        ..Options::default()
    };
    let engine = Arc::new(Engine::open(dir.path(), opts).unwrap());
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    for t in 0..WRITERS {
        let (e, done) = (engine.clone(), done_tx.clone());
        std::thread::spawn(move || {
            for i in 0..EACH {
                let mut b = WriteBatch::new();
                b.put(format!("w{t:02}-{i:04}"), format!("v{t}-{i}"));
                e.write(b).unwrap();
            }
            done.send(t).unwrap();
        });
    }
    let mut finished = Vec::new();
    for _ in 0..WRITERS {
        match done_rx.recv_timeout(Duration::from_secs(120)) {
            Ok(t) => finished.push(t),
            Err(_) => panic!(
                "writers still waiting after 120 s: {:?}",
                (0..WRITERS)
                    .filter(|t| !finished.contains(t))
                    .collect::<Vec<_>>()
            ),
        }
    }
    for t in 0..WRITERS {
        for i in (0..EACH).step_by(37) {
            let got = engine.get(format!("w{t:02}-{i:04}").as_bytes()).unwrap();
            assert_eq!(got, Some(format!("v{t}-{i}").into_bytes()));
        }
    }
    let s = engine.stats();
    assert_eq!(s.writes, (WRITERS * EACH) as u64);
    assert!(
        s.wal_syncs < s.writes / 2,
        "{} fsyncs for {} writes: the writers did not share them",
        s.wal_syncs,
        s.writes
    );
}

//! The three sync modes: `Always` fsyncs before acknowledging, `Interval` fsyncs in the
//! background, `None` never fsyncs on the write path; all three recover what reached the log.

use std::time::Duration;

use kvd_storage::{Engine, Options, SyncMode};

fn roundtrip(sync: SyncMode) -> kvd_storage::Stats {
    let dir = tempfile::tempdir().unwrap();
    let o = Options {
        sync,
        sync_interval: Duration::from_millis(20),
        flush_on_close: false,
        ..Options::default()
    };
    let e = Engine::open(dir.path(), o.clone()).unwrap();
    for i in 0..50u32 {
        e.put(&i.to_be_bytes(), b"v").unwrap();
    }
    if sync == SyncMode::Interval {
        // Wait (bounded) for the background fsync instead of sleeping a fixed time.
        for _ in 0..200 {
            if e.stats().wal_syncs > 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let stats = e.stats();
    drop(e);
    let e = Engine::open(dir.path(), o).unwrap();
    assert_eq!(e.recovery_report().records_replayed, 50);
    for i in 0..50u32 {
        assert_eq!(e.get(&i.to_be_bytes()).unwrap(), Some(b"v".to_vec()));
    }
    stats
}

#[test]
fn always_fsyncs_every_commit_group() {
    let s = roundtrip(SyncMode::Always);
    assert_eq!(s.writes, 50);
    assert_eq!(s.wal_syncs, s.write_groups);
}

#[test]
fn interval_fsyncs_in_the_background() {
    let s = roundtrip(SyncMode::Interval);
    assert!(s.wal_syncs >= 1, "no background fsync happened");
    assert!(s.wal_syncs < 50);
}

#[test]
fn none_never_fsyncs_on_the_write_path() {
    let s = roundtrip(SyncMode::None);
    assert_eq!(s.wal_syncs, 0);
}

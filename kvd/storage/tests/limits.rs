//! Size limits and scale: 1 MiB values, thousands of tables, many concurrent writers.

use std::ops::Bound;
use std::sync::Arc;

use kvd_storage::{Engine, Error, Options, SyncMode, WriteBatch};

fn big(i: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|j| (j as u8).wrapping_mul(31).wrapping_add(i))
        .collect()
}

#[test]
fn values_up_to_one_mebibyte_survive_flush_compaction_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let o = Options {
        sync: SyncMode::None,
        memtable_bytes: 2 << 20,
        background_work: false,
        ..Options::default()
    };
    let max = o.max_value_bytes;
    let e = Engine::open(dir.path(), o.clone()).unwrap();
    for i in 0..6u8 {
        e.put(&[b'k', i], &big(i, max - i as usize)).unwrap();
    }
    assert!(matches!(
        e.put(b"too", &big(0, max + 1)),
        Err(Error::TooLarge { what: "value", .. })
    ));
    e.flush().unwrap();
    e.put(b"k\x06", &big(6, max)).unwrap();
    drop(e); // k6 only in the commit log
    let e = Engine::open(dir.path(), o.clone()).unwrap();
    e.compact().unwrap();
    for i in 0..7u8 {
        let len = if i == 6 { max } else { max - i as usize };
        assert_eq!(e.get(&[b'k', i]).unwrap(), Some(big(i, len)));
    }
    assert_eq!(e.get(b"too").unwrap(), None);
    let n = e.scan(Bound::Unbounded, Bound::Unbounded).unwrap().count();
    assert_eq!(n, 7);
}

#[test]
fn reopen_with_thousands_of_tables() {
    let dir = tempfile::tempdir().unwrap();
    let n_keys = 28_000u32;
    let o = Options {
        sync: SyncMode::None,
        background_work: false,
        table_bytes: 128, // about 6 keys per table
        block_bytes: 256,
        compression: false,
        ..Options::default()
    };
    let e = Engine::open(dir.path(), o.clone()).unwrap();
    let mut b = WriteBatch::new();
    for i in 0..n_keys {
        b.put(format!("key{i:07}"), format!("v{i}"));
    }
    e.write(b).unwrap();
    e.compact().unwrap();
    let tables = e.stats().table_count;
    assert!(tables >= 2000, "only {tables} tables");
    e.close().unwrap();
    let e = Engine::open(dir.path(), o).unwrap();
    assert_eq!(e.recovery_report().tables_opened, tables);
    for i in (0..n_keys).step_by(97) {
        assert_eq!(
            e.get(format!("key{i:07}").as_bytes()).unwrap(),
            Some(format!("v{i}").into_bytes())
        );
    }
    assert_eq!(e.get(b"key9999999").unwrap(), None);
    let got = e
        .scan(
            Bound::Included(b"key0001000".as_slice()),
            Bound::Excluded(b"key0002000".as_slice()),
        )
        .unwrap()
        .count();
    assert_eq!(got, 1000);
    println!("reopened with {tables} tables");
}

#[test]
fn concurrent_writers_share_fsyncs_and_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let o = Options {
        sync: SyncMode::Always,
        memtable_bytes: 64 << 10,
        ..Options::default()
    };
    let e = Arc::new(Engine::open(dir.path(), o.clone()).unwrap());
    let threads = 16;
    let per = 60;
    let hs: Vec<_> = (0..threads)
        .map(|t| {
            let e = e.clone();
            std::thread::spawn(move || {
                for i in 0..per {
                    e.put(
                        format!("t{t:02}-{i:04}").as_bytes(),
                        format!("{t}/{i}").as_bytes(),
                    )
                    .unwrap();
                    // Readers run while writers append.
                    assert_eq!(
                        e.get(format!("t{t:02}-{i:04}").as_bytes()).unwrap(),
                        Some(format!("{t}/{i}").into_bytes())
                    );
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    let s = e.stats();
    assert_eq!(s.writes, (threads * per) as u64);
    // Every acknowledged write was fsynced, some fsyncs covered several writers.
    assert!(s.wal_syncs >= 1 && s.wal_syncs <= s.writes);
    println!(
        "{} writes in {} commit groups ({} fsyncs)",
        s.writes, s.write_groups, s.wal_syncs
    );
    drop(e);
    let e = Engine::open(dir.path(), o).unwrap();
    assert_eq!(
        e.scan(Bound::Unbounded, Bound::Unbounded).unwrap().count(),
        threads * per
    );
}

#[test]
fn engine_is_shareable_and_scans_can_move_between_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    fn assert_send<T: Send>() {}
    assert_send_sync::<Engine>();
    assert_send::<kvd_storage::Scan>();
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(dir.path(), Options::default()).unwrap();
    e.put(b"k", b"v").unwrap();
    let scan = e.scan(Bound::Unbounded, Bound::Unbounded).unwrap();
    let got: Vec<_> = std::thread::spawn(move || scan.map(|r| r.unwrap()).collect())
        .join()
        .unwrap();
    assert_eq!(got, vec![(b"k".to_vec(), b"v".to_vec())]);
}

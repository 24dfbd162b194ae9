//! Damaged files: a torn commit-log tail is cut and reported, a flipped bit with whole
//! records after it refuses the open (or is skipped when asked), a flipped bit in
//! a table is reported as `Error::Corruption` naming the file and offset, never returned as a
//! value; a directory with data but no manifest is refused.

use std::ops::Bound;
use std::path::{Path, PathBuf};

use kvd_storage::{Engine, Error, LogRecovery, Options, SyncMode};

fn opts() -> Options {
    Options {
        sync: SyncMode::Always,
        background_work: false,
        flush_on_close: false,
        block_bytes: 1024,
        ..Options::default()
    }
}

fn key(i: u32) -> Vec<u8> {
    format!("key{i:06}").into_bytes()
}

fn value(i: u32) -> Vec<u8> {
    format!("value-{i}-{}", "y".repeat((i % 50) as usize)).into_bytes()
}

fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    v.sort();
    v
}

/// Writes `n` single-key batches and leaves them only in the commit log.
fn log_only(dir: &Path, n: u32) -> PathBuf {
    let e = Engine::open(dir, opts()).unwrap();
    for i in 0..n {
        e.put(&key(i), &value(i)).unwrap();
    }
    drop(e);
    let logs = files(dir, "log");
    assert_eq!(logs.len(), 1);
    logs[0].clone()
}

/// Bytes of `segment` up to the zeros it may end in (written ahead of the appends), read off
/// the frame headers.
fn records_len(segment: &[u8]) -> usize {
    let mut pos = 0;
    while segment[pos..].iter().any(|&b| b != 0) {
        let len = u32::from_le_bytes(segment[pos..pos + 4].try_into().unwrap()) as usize;
        pos += 8 + len;
    }
    pos
}

#[test]
fn torn_commit_log_tail_is_cut_at_the_last_whole_record() {
    let n = 60;
    let src = tempfile::tempdir().unwrap();
    let log = log_only(src.path(), n);
    let segment = std::fs::read(&log).unwrap();
    let full = &segment[..records_len(&segment)];
    // Torn at `cut`: the file ends there, or zeros follow (those written ahead).
    let cuts = (0..full.len()).step_by(37).chain([full.len() - 1]);
    for (cut, zeros) in cuts.flat_map(|c| [(c, false), (c, true)]) {
        let dir = tempfile::tempdir().unwrap();
        for f in std::fs::read_dir(src.path()).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, dir.path().join(f.file_name().unwrap())).unwrap();
        }
        let log_copy = dir.path().join(log.file_name().unwrap());
        let mut torn = full[..cut].to_vec();
        if zeros {
            torn.resize(segment.len(), 0);
        }
        std::fs::write(&log_copy, &torn).unwrap();
        let e = Engine::open(dir.path(), opts()).unwrap();
        let r = e.recovery_report().clone();
        let present = (0..n)
            .take_while(|&i| e.get(&key(i)).unwrap() == Some(value(i)))
            .count() as u32;
        // A prefix of the writes survives, and nothing after the cut.
        for i in present..n {
            assert_eq!(
                e.get(&key(i)).unwrap(),
                None,
                "cut {cut} (zeros after: {zeros}): key {i} after the cut"
            );
        }
        assert_eq!(r.records_replayed, present as u64);
        if let Some(t) = &r.torn_tail {
            assert_eq!(t.file, log_copy);
            assert!(t.offset as usize <= cut);
        } else {
            assert!(cut == 0 || present > 0);
        }
        // The cut is final: a second open replays no garbage and keeps the same data.
        drop(e);
        let e = Engine::open(dir.path(), opts()).unwrap();
        assert_eq!(e.recovery_report().torn_tail, None);
        assert_eq!(
            e.scan(Bound::Unbounded, Bound::Unbounded).unwrap().count() as u32,
            present
        );
    }
}

/// The regression of a flipped byte in the middle of the newest segment: it used to be cut
/// as a torn tail, so the node started without the acknowledged writes after it.
#[test]
fn a_bit_flip_before_whole_records_refuses_the_open_unless_told_to_skip_it() {
    let n = 40;
    let dir = tempfile::tempdir().unwrap();
    let log = log_only(dir.path(), n);
    let mut data = std::fs::read(&log).unwrap();
    let at = records_len(&data) * 3 / 4;
    data[at] ^= 0x40;
    std::fs::write(&log, &data).unwrap();
    match Engine::open(dir.path(), opts()) {
        Err(Error::Corruption { file, offset, what }) => {
            assert_eq!(file, log);
            assert!(offset as usize <= at, "{offset} {at}");
            assert!(what.contains("skip-damaged"), "says how to go on: {what}");
        }
        other => panic!("opened over damage: {:?}", other.map(|_| ())),
    }
    // Nothing was changed by the refused open: skipping the damage replays every other write.
    let o = Options {
        log_recovery: LogRecovery::SkipDamaged,
        ..opts()
    };
    let e = Engine::open(dir.path(), o).unwrap();
    let r = e.recovery_report().clone();
    assert_eq!(r.skipped_damage.len(), 1, "{r:?}");
    assert_eq!(r.skipped_damage[0].file, log);
    assert_eq!(r.records_replayed, u64::from(n) - 1);
    let missing: Vec<u32> = (0..n)
        .filter(|&i| e.get(&key(i)).unwrap() != Some(value(i)))
        .collect();
    assert_eq!(
        missing.len(),
        1,
        "only the damaged record's write: {missing:?}"
    );
    // The damaged segment was replayed into the memtable and is flushed like any other; a
    // second open, strict again, has nothing damaged left to refuse.
    e.flush().unwrap();
    drop(e);
    let e = Engine::open(dir.path(), opts()).unwrap();
    assert!(e.recovery_report().skipped_damage.is_empty());
    assert_eq!(e.get(&key(0)).unwrap(), Some(value(0)));
}

#[test]
fn corruption_in_an_older_commit_log_segment_fails_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts();
    o.memtable_bytes = 2048; // several segments
    let e = Engine::open(dir.path(), o.clone()).unwrap();
    for i in 0..200 {
        e.put(&key(i), &value(i)).unwrap();
    }
    drop(e);
    let logs = files(dir.path(), "log");
    assert!(logs.len() >= 2, "{logs:?}");
    let mut data = std::fs::read(&logs[0]).unwrap();
    data[10] ^= 1;
    std::fs::write(&logs[0], &data).unwrap();
    match Engine::open(dir.path(), o) {
        Err(Error::Corruption { file, .. }) => assert_eq!(file, logs[0]),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("opened over a corrupt older segment"),
    }
}

#[test]
fn bit_flips_in_a_table_are_errors_never_values() {
    let n = 400;
    let src = tempfile::tempdir().unwrap();
    {
        let mut o = opts();
        o.compression = false;
        let e = Engine::open(src.path(), o).unwrap();
        for i in 0..n {
            e.put(&key(i), &value(i)).unwrap();
        }
        e.flush().unwrap();
        e.close().unwrap();
    }
    let tables = files(src.path(), "sst");
    assert_eq!(tables.len(), 1);
    let orig = std::fs::read(&tables[0]).unwrap();
    let (mut open_failures, mut read_errors) = (0, 0);
    for pos in (0..orig.len())
        .step_by(97)
        .chain([orig.len() - 1, orig.len() - 30])
    {
        let dir = tempfile::tempdir().unwrap();
        for f in std::fs::read_dir(src.path()).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, dir.path().join(f.file_name().unwrap())).unwrap();
        }
        let table = dir.path().join(tables[0].file_name().unwrap());
        let mut d = orig.clone();
        d[pos] ^= 0x08;
        std::fs::write(&table, &d).unwrap();
        let e = match Engine::open(dir.path(), opts()) {
            Ok(e) => e,
            Err(Error::Corruption { file, .. }) => {
                assert_eq!(file, table);
                open_failures += 1;
                continue;
            }
            Err(e) => panic!("flip at {pos}: unexpected error {e}"),
        };
        let mut saw_error = false;
        for i in 0..n {
            match e.get(&key(i)) {
                Ok(v) => assert_eq!(v, Some(value(i)), "flip at {pos}: wrong value for key {i}"),
                Err(Error::Corruption { file, offset, .. }) => {
                    assert_eq!(file, table);
                    assert!(
                        offset <= pos as u64,
                        "offset {offset} after the flip at {pos}"
                    );
                    saw_error = true;
                }
                Err(e) => panic!("flip at {pos}: unexpected error {e}"),
            }
        }
        // Opening a scan reads the first block, so the error may come from `scan` itself.
        let scanned: Vec<_> = match e.scan(Bound::Unbounded, Bound::Unbounded) {
            Ok(s) => s.collect(),
            Err(err) => vec![Err(err)],
        };
        if let Some(Err(err)) = scanned.last() {
            assert!(matches!(err, Error::Corruption { file, .. } if *file == table));
        }
        if saw_error {
            read_errors += 1;
            assert!(
                scanned.last().unwrap().is_err(),
                "flip at {pos}: scan did not report it"
            );
        }
        for item in scanned.into_iter().flatten() {
            let i: u32 = std::str::from_utf8(&item.0[3..]).unwrap().parse().unwrap();
            assert_eq!(item.1, value(i));
        }
    }
    assert!(
        open_failures > 0 && read_errors > 0,
        "{open_failures} {read_errors}"
    );
}

#[test]
fn data_files_without_a_manifest_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(dir.path(), opts()).unwrap();
    e.put(b"a", b"1").unwrap();
    drop(e);
    std::fs::remove_file(dir.path().join("MANIFEST")).unwrap();
    match Engine::open(dir.path(), opts()) {
        Err(Error::InvalidDir { .. }) => {}
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("started empty over existing data"),
    }
}

#[test]
fn a_second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _e = Engine::open(dir.path(), opts()).unwrap();
    assert!(matches!(
        Engine::open(dir.path(), opts()),
        Err(Error::InvalidDir { .. })
    ));
}

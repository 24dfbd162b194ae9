//! Random bit flips in the files the engine wrote, seeded and repeated over many rounds.
//!
//! Commit logs: a flip in the last record of the newest segment is reported as a torn tail
//! (file and offset of the record) and cut there; a flip with whole records after it is damage
//! and refuses the open, naming the segment and the bad record's offset, unless the engine is
//! told to skip damage, when it holds exactly the writes of every undamaged record. A flip in
//! an older segment refuses the open with a corruption error naming that segment and the bad
//! record's offset. SSTables: every flip is detected, by the
//! open or by a read, as a corruption error naming the table and an offset at or before the
//! flipped byte. The manifest: every flip refuses the open with a corruption error naming it.
//! In no round is a value served that differs from what was written.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::{Path, PathBuf};

use kvd_storage::fuzzing::frame_batch;
use kvd_storage::{Engine, Error, LogRecovery, Options, SyncMode, WriteBatch};

/// A small deterministic generator (splitmix64), so every round can be replayed from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

fn opts() -> Options {
    Options {
        sync: SyncMode::Always,
        background_work: false,
        flush_on_close: false,
        block_bytes: 512,
        ..Options::default()
    }
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

fn copy_dir(from: &Path, to: &Path) {
    for f in std::fs::read_dir(from).unwrap() {
        let f = f.unwrap().path();
        if f.is_file() {
            std::fs::copy(&f, to.join(f.file_name().unwrap())).unwrap();
        }
    }
}

/// A random batch of puts and deletes over a small key space, so keys are overwritten and
/// deleted often (a stale version served would show as a wrong value).
fn random_batch(rng: &mut Rng) -> WriteBatch {
    let mut b = WriteBatch::new();
    for _ in 0..1 + rng.below(4) {
        let key = format!("key{:04}", rng.below(120)).into_bytes();
        if rng.below(5) == 0 {
            b.delete(key);
        } else {
            let len = rng.below(200);
            let value: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            b.put(key, value);
        }
    }
    b
}

fn apply(model: &mut Model, batch: &WriteBatch) {
    for op in batch.ops() {
        match op {
            kvd_storage::WriteOp::Put(k, v) => {
                model.insert(k.clone(), v.clone());
            }
            kvd_storage::WriteOp::Delete(k) => {
                model.remove(k);
            }
        }
    }
}

/// Everything the engine serves, by point reads of every key ever written and by a full
/// scan, must equal `model`.
fn assert_serves_exactly(e: &Engine, model: &Model, what: &str) {
    for i in 0..120 {
        let key = format!("key{i:04}").into_bytes();
        assert_eq!(
            e.get(&key)
                .unwrap_or_else(|err| panic!("{what}: get failed: {err}")),
            model.get(&key).cloned(),
            "{what}: key {i}"
        );
    }
    let scanned: Model = e
        .scan(Bound::Unbounded, Bound::Unbounded)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap_or_else(|err| panic!("{what}: scan failed: {err}"));
    assert_eq!(&scanned, model, "{what}: scan");
}

/// The model after each prefix of `batches`: `states[r]` holds the first `r` batches.
fn prefix_states(batches: &[WriteBatch]) -> Vec<Model> {
    let mut states = vec![Model::new()];
    let mut m = Model::new();
    for b in batches {
        apply(&mut m, b);
        states.push(m.clone());
    }
    states
}

/// Flips `flips` distinct random bits of `data`; returns the byte positions, ascending.
fn flip_bits(rng: &mut Rng, data: &mut [u8], flips: usize) -> Vec<usize> {
    let mut bits: Vec<usize> = Vec::new();
    while bits.len() < flips {
        let bit = rng.below(data.len() * 8);
        if !bits.contains(&bit) {
            bits.push(bit);
        }
    }
    for &bit in &bits {
        data[bit / 8] ^= 1 << (bit % 8);
    }
    let mut bytes: Vec<usize> = bits.iter().map(|b| b / 8).collect();
    bytes.sort_unstable();
    bytes
}

/// Writes `batches` and leaves them only in commit-log segments (nothing flushed); returns
/// the segments, oldest first.
fn write_logs_only(dir: &Path, batches: &[WriteBatch], memtable_bytes: usize) -> Vec<PathBuf> {
    let o = Options {
        memtable_bytes,
        max_immutable_memtables: 1000,
        ..opts()
    };
    let e = Engine::open(dir, o).unwrap();
    for b in batches {
        e.write(b.clone()).unwrap();
    }
    drop(e);
    files(dir, "log")
}

/// Frame ends in a segment's contents, read off the frame headers, up to the zeros a segment
/// may end in (written ahead of the appends).
fn frame_ends(data: &[u8]) -> Vec<usize> {
    let mut ends = Vec::new();
    let mut pos = 0;
    while pos < data.len() && data[pos..].iter().any(|&b| b != 0) {
        let len = u32::from_le_bytes(data[pos..pos + 4].try_into().unwrap()) as usize;
        pos += 8 + len;
        ends.push(pos);
    }
    assert!(pos <= data.len(), "segment ends inside a frame");
    ends
}

#[test]
fn flips_in_the_newest_commit_log_segment_refuse_the_open_or_cut_a_torn_tail() {
    let mut rng = Rng(0x5eed_0001);
    let batches: Vec<WriteBatch> = (0..150).map(|_| random_batch(&mut rng)).collect();
    let states = prefix_states(&batches);
    let src = tempfile::tempdir().unwrap();
    let logs = write_logs_only(src.path(), &batches, 64 << 20);
    assert_eq!(logs.len(), 1, "{logs:?}");
    let orig = std::fs::read(&logs[0]).unwrap();
    // Each batch is one record: the frames the writer appends, in order.
    let expect_ends: Vec<usize> = batches
        .iter()
        .scan(0, |end, b| {
            *end += frame_batch(b).len();
            Some(*end)
        })
        .collect();
    assert_eq!(frame_ends(&orig), expect_ends);

    let rounds = 300u32;
    for round in 0..rounds {
        let flips = 1 + rng.below(3);
        let dir = tempfile::tempdir().unwrap();
        copy_dir(src.path(), dir.path());
        let log = dir.path().join(logs[0].file_name().unwrap());
        let mut data = orig.clone();
        // In the records (not the zeros after them).
        let at = flip_bits(
            &mut rng,
            &mut data[..expect_ends[expect_ends.len() - 1]],
            flips,
        );
        std::fs::write(&log, &data).unwrap();
        let what = format!("round {round}: {flips} flips at bytes {at:?}");

        // The records holding a flipped byte; the first one is where replay stops.
        let record_of = |byte: usize| expect_ends.iter().filter(|&&e| e <= byte).count();
        let damaged: Vec<usize> = at.iter().map(|&b| record_of(b)).collect();
        let first = at[0];
        let kept = record_of(first);
        let cut_at = if kept == 0 { 0 } else { expect_ends[kept - 1] };

        // Skipping damage: every record without a flipped byte is replayed, in order.
        let skip_dir = tempfile::tempdir().unwrap();
        copy_dir(dir.path(), skip_dir.path());
        let skipping = Options {
            log_recovery: LogRecovery::SkipDamaged,
            ..opts()
        };
        let e = Engine::open(skip_dir.path(), skipping)
            .unwrap_or_else(|err| panic!("{what}: skipping: {err}"));
        let mut model = Model::new();
        for (i, b) in batches.iter().enumerate() {
            if !damaged.contains(&i) {
                apply(&mut model, b);
            }
        }
        assert_serves_exactly(&e, &model, &format!("{what} (skipping damage)"));
        drop(e);

        // Strict: damage with whole records after it refuses the open.
        if (kept + 1..batches.len()).any(|j| !damaged.contains(&j)) {
            match Engine::open(dir.path(), opts()) {
                Err(Error::Corruption {
                    file,
                    offset,
                    what: why,
                }) => {
                    assert_eq!(file, log, "{what}");
                    assert_eq!(offset as usize, cut_at, "{what}: {why}");
                    assert!(why.contains("damaged, not torn"), "{what}: {why}");
                }
                other => panic!(
                    "{what}: damage in the middle opened: {:?}",
                    other.map(|_| ())
                ),
            }
            continue;
        }
        // Only the last records are damaged: a torn tail, cut; the records before it are
        // replayed whole.
        let e = Engine::open(dir.path(), opts()).unwrap_or_else(|err| panic!("{what}: {err}"));
        let report = e.recovery_report().clone();
        let torn = report
            .torn_tail
            .clone()
            .unwrap_or_else(|| panic!("{what}: not reported"));
        assert_eq!(torn.file, log, "{what}");
        assert_eq!(torn.offset as usize, cut_at, "{what}: {}", torn.reason);
        assert_eq!(report.records_replayed as usize, kept, "{what}");
        assert_serves_exactly(&e, &states[kept], &what);
        // The cut is final: the next open replays nothing torn and serves the same data.
        if round.is_multiple_of(25) {
            drop(e);
            let e = Engine::open(dir.path(), opts()).unwrap();
            assert_eq!(e.recovery_report().torn_tail, None, "{what}");
            assert_serves_exactly(&e, &states[kept], &what);
        }
    }
}

#[test]
fn flips_in_an_older_commit_log_segment_refuse_the_open_naming_file_and_record() {
    let mut rng = Rng(0x5eed_0002);
    let batches: Vec<WriteBatch> = (0..300).map(|_| random_batch(&mut rng)).collect();
    let src = tempfile::tempdir().unwrap();
    let logs = write_logs_only(src.path(), &batches, 4096);
    assert!(logs.len() >= 3, "{logs:?}");
    let contents: Vec<Vec<u8>> = logs.iter().map(|l| std::fs::read(l).unwrap()).collect();

    for round in 0..150 {
        // Any segment but the newest; the newest ends the log and may be cut instead.
        let seg = rng.below(logs.len() - 1);
        let dir = tempfile::tempdir().unwrap();
        copy_dir(src.path(), dir.path());
        let log = dir.path().join(logs[seg].file_name().unwrap());
        let mut data = contents[seg].clone();
        let flips = 1 + rng.below(3);
        let ends = frame_ends(&contents[seg]);
        let at = flip_bits(&mut rng, &mut data[..ends[ends.len() - 1]], flips);
        std::fs::write(&log, &data).unwrap();
        let what = format!("round {round}: segment {seg}, flips at bytes {at:?}");
        let record_start = ends.iter().rfind(|&&e| e <= at[0]).copied().unwrap_or(0);
        match Engine::open(dir.path(), opts()) {
            Err(err @ Error::Corruption { .. }) => {
                let Error::Corruption { file, offset, .. } = &err else {
                    unreachable!()
                };
                assert_eq!(file, &log, "{what}");
                assert_eq!(*offset as usize, record_start, "{what}: {err}");
                let msg = err.to_string();
                assert!(
                    msg.contains(&log.display().to_string())
                        && msg.contains(&format!("offset {record_start}")),
                    "{what}: message does not say where: {msg}"
                );
            }
            Err(err) => panic!("{what}: unexpected error {err}"),
            Ok(_) => panic!("{what}: opened over a corrupt older segment"),
        }
    }
}

/// Builds a directory whose data lives only in tables (several levels, several tables per
/// level); returns the model and the tables.
fn write_tables(dir: &Path, rng: &mut Rng, compression: bool) -> (Model, Vec<PathBuf>) {
    let o = Options {
        compression,
        table_bytes: 4096,
        ..opts()
    };
    let e = Engine::open(dir, o.clone()).unwrap();
    let mut model = Model::new();
    for round in 0..6 {
        for _ in 0..60 {
            let b = random_batch(rng);
            apply(&mut model, &b);
            e.write(b).unwrap();
        }
        e.flush().unwrap();
        if round == 3 {
            e.compact().unwrap();
        }
    }
    e.close().unwrap();
    // A reopen settles the directory: only live tables remain.
    Engine::open(dir, o).unwrap().close().unwrap();
    let tables = files(dir, "sst");
    (model, tables)
}

/// What a reader did with a damaged table: refused it at open, or reported it on a read.
#[derive(Default, Debug)]
struct Detected {
    at_open: usize,
    on_read: usize,
}

/// The error is a corruption report naming `table` and an offset at or before the last
/// flipped byte (the start of the damaged block, or of the footer), in its fields and in its
/// message.
fn check_corruption(err: &Error, table: &Path, last_flip: usize, what: &str) {
    match err {
        Error::Corruption { file, offset, .. } => {
            assert_eq!(file, table, "{what}: {err}");
            assert!(
                *offset as usize <= last_flip,
                "{what}: offset after the flips: {err}"
            );
            let msg = err.to_string();
            assert!(
                msg.contains(&table.display().to_string())
                    && msg.contains(&format!("offset {offset}")),
                "{what}: message does not say where: {msg}"
            );
        }
        other => panic!("{what}: unexpected error {other}"),
    }
}

fn table_flips(compression: bool, seed: u64) -> Detected {
    let mut rng = Rng(seed);
    let src = tempfile::tempdir().unwrap();
    let (model, tables) = write_tables(src.path(), &mut rng, compression);
    assert!(tables.len() >= 3, "{tables:?}");
    {
        let e = Engine::open(src.path(), opts()).unwrap();
        assert_serves_exactly(&e, &model, "undamaged");
    }
    let mut detected = Detected::default();
    for round in 0..200 {
        let t = rng.below(tables.len());
        let dir = tempfile::tempdir().unwrap();
        copy_dir(src.path(), dir.path());
        let table = dir.path().join(tables[t].file_name().unwrap());
        let mut data = std::fs::read(&table).unwrap();
        let flips = 1 + rng.below(3);
        let at = flip_bits(&mut rng, &mut data, flips);
        std::fs::write(&table, &data).unwrap();
        let what = format!(
            "round {round} (compression {compression}): {} flips at bytes {at:?}",
            table.display()
        );
        let e = match Engine::open(dir.path(), opts()) {
            Ok(e) => e,
            Err(err) => {
                check_corruption(&err, &table, at[at.len() - 1], &what);
                detected.at_open += 1;
                continue;
            }
        };
        // Open succeeded: every flip sits in a data block. Point reads either return what
        // was written or report the damaged block; a full scan must hit it.
        let mut errors = 0;
        for i in 0..120 {
            let key = format!("key{i:04}").into_bytes();
            match e.get(&key) {
                Ok(v) => assert_eq!(v, model.get(&key).cloned(), "{what}: key {i}"),
                Err(err) => {
                    check_corruption(&err, &table, at[at.len() - 1], &what);
                    errors += 1;
                }
            }
        }
        let mut scan_error = None;
        match e.scan(Bound::Unbounded, Bound::Unbounded) {
            Err(err) => scan_error = Some(err),
            Ok(scan) => {
                for item in scan {
                    match item {
                        Ok((k, v)) => {
                            assert_eq!(model.get(&k), Some(&v), "{what}: scan served {k:?}")
                        }
                        Err(err) => {
                            scan_error = Some(err);
                            break;
                        }
                    }
                }
            }
        }
        let err = scan_error.unwrap_or_else(|| {
            panic!("{what}: a full scan read every block and found nothing ({errors} get errors)")
        });
        check_corruption(&err, &table, at[at.len() - 1], &what);
        detected.on_read += 1;
    }
    println!("compression {compression}: {detected:?}");
    assert!(detected.at_open > 0 && detected.on_read > 0, "{detected:?}");
    detected
}

#[test]
fn flips_in_uncompressed_tables_are_always_detected_never_served() {
    table_flips(false, 0x5eed_0003);
}

#[test]
fn flips_in_compressed_tables_are_always_detected_never_served() {
    table_flips(true, 0x5eed_0004);
}

#[test]
fn flips_in_the_manifest_refuse_the_open_naming_it() {
    let mut rng = Rng(0x5eed_0005);
    let src = tempfile::tempdir().unwrap();
    write_tables(src.path(), &mut rng, false);
    let manifest = std::fs::read(src.path().join("MANIFEST")).unwrap();
    for round in 0..100 {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(src.path(), dir.path());
        let path = dir.path().join("MANIFEST");
        let mut data = manifest.clone();
        let flips = 1 + rng.below(3);
        let at = flip_bits(&mut rng, &mut data, flips);
        std::fs::write(&path, &data).unwrap();
        let what = format!("round {round}: flips at bytes {at:?}");
        match Engine::open(dir.path(), opts()) {
            Err(err @ Error::Corruption { .. }) => {
                let msg = err.to_string();
                let Error::Corruption { file, offset, .. } = &err else {
                    unreachable!()
                };
                assert_eq!(file, &path, "{what}: {err}");
                assert!((*offset as usize) < data.len(), "{what}: {err}");
                assert!(
                    msg.contains(&path.display().to_string()) && msg.contains("offset"),
                    "{what}: message does not say where: {msg}"
                );
            }
            Err(err) => panic!("{what}: unexpected error {err}"),
            Ok(_) => panic!("{what}: opened over a damaged manifest"),
        }
    }
}

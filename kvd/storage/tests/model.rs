//! Model test: random operation sequences against the engine and a `BTreeMap`, with flushes,
//! compactions and reopens in between; every read must agree with the model.

use std::collections::BTreeMap;
use std::ops::Bound;

use kvd_storage::{Engine, Options, SyncMode, WriteBatch};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Put(u16, u16),
    Delete(u16),
    Batch(Vec<(u16, Option<u16>)>),
    Get(u16),
    Scan(u16, u16),
    Flush,
    CompactPending,
    CompactAll,
    Reopen,
}

fn key(k: u16) -> Vec<u8> {
    format!("key{k:05}").into_bytes()
}

fn value(k: u16, v: u16) -> Vec<u8> {
    // Lengths vary from 0 to a few hundred bytes so blocks split at varied points.
    let len = (v as usize * 7) % 300;
    let mut out = format!("v{k}-{v}-").into_bytes();
    out.extend(std::iter::repeat_n(b'x', len));
    out
}

fn op() -> impl Strategy<Value = Op> {
    let k = 0u16..400;
    prop_oneof![
        30 => (k.clone(), any::<u16>()).prop_map(|(k, v)| Op::Put(k, v)),
        8 => k.clone().prop_map(Op::Delete),
        4 => proptest::collection::vec((k.clone(), proptest::option::of(any::<u16>())), 1..8).prop_map(Op::Batch),
        20 => k.clone().prop_map(Op::Get),
        4 => (k.clone(), k).prop_map(|(a, b)| Op::Scan(a.min(b), a.max(b))),
        2 => Just(Op::Flush),
        2 => Just(Op::CompactPending),
        1 => Just(Op::CompactAll),
        1 => Just(Op::Reopen),
    ]
}

fn opts(background: bool) -> Options {
    Options {
        sync: SyncMode::None,
        memtable_bytes: 4 << 10,
        block_bytes: 512,
        table_bytes: 8 << 10,
        level1_bytes: 16 << 10,
        level_multiplier: 4,
        l0_compaction_trigger: 2,
        num_levels: 4,
        block_cache_bytes: 64 << 10,
        background_work: background,
        flush_on_close: false,
        ..Options::default()
    }
}

fn check_scan(e: &Engine, model: &BTreeMap<Vec<u8>, Vec<u8>>, a: u16, b: u16) {
    let (ka, kb) = (key(a), key(b));
    let got: Vec<(Vec<u8>, Vec<u8>)> = e
        .scan(Bound::Included(&ka), Bound::Excluded(&kb))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    let want: Vec<(Vec<u8>, Vec<u8>)> = model
        .range::<Vec<u8>, _>((Bound::Included(&ka), Bound::Excluded(&kb)))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert_eq!(got, want, "scan [{a}, {b})");
}

fn run(ops: Vec<Op>, background: bool) {
    let dir = tempfile::tempdir().unwrap();
    let mut e = Some(Engine::open(dir.path(), opts(background)).unwrap());
    let mut model = BTreeMap::new();
    for op in ops {
        let eng = e.as_ref().unwrap();
        match op {
            Op::Put(k, v) => {
                eng.put(&key(k), &value(k, v)).unwrap();
                model.insert(key(k), value(k, v));
            }
            Op::Delete(k) => {
                eng.delete(&key(k)).unwrap();
                model.remove(&key(k));
            }
            Op::Batch(items) => {
                let mut b = WriteBatch::new();
                for (k, v) in items {
                    match v {
                        Some(v) => {
                            b.put(key(k), value(k, v));
                            model.insert(key(k), value(k, v));
                        }
                        None => {
                            b.delete(key(k));
                            model.remove(&key(k));
                        }
                    }
                }
                eng.write(b).unwrap();
            }
            Op::Get(k) => assert_eq!(
                eng.get(&key(k)).unwrap(),
                model.get(&key(k)).cloned(),
                "get {k}"
            ),
            Op::Scan(a, b) => check_scan(eng, &model, a, b),
            Op::Flush => eng.flush().unwrap(),
            Op::CompactPending => {
                eng.compact_pending().unwrap();
            }
            Op::CompactAll => eng.compact().unwrap(),
            Op::Reopen => {
                e.take().unwrap().close().unwrap();
                e = Some(Engine::open(dir.path(), opts(background)).unwrap());
            }
        }
    }
    let eng = e.as_ref().unwrap();
    check_scan(eng, &model, 0, u16::MAX);
    for (k, v) in &model {
        assert_eq!(eng.get(k).unwrap().as_ref(), Some(v));
    }
    // A final reopen without flush must replay the commit log to the same state.
    drop(e);
    let eng = Engine::open(dir.path(), opts(background)).unwrap();
    check_scan(&eng, &model, 0, u16::MAX);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_btreemap(ops in proptest::collection::vec(op(), 1..400)) {
        run(ops, false);
    }

    #[test]
    fn engine_matches_btreemap_with_background_work(ops in proptest::collection::vec(op(), 1..400)) {
        run(ops, true);
    }
}

#[test]
fn tombstones_vanish_at_the_last_level_and_purge_predicate_is_asked() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(false);
    o.tombstone_purge = Some(std::sync::Arc::new(|_k: &[u8], v: &[u8]| {
        v.starts_with(b"TOMB")
    }));
    let e = Engine::open(dir.path(), o).unwrap();
    for i in 0..200u16 {
        e.put(&key(i), &value(i, i)).unwrap();
    }
    e.flush().unwrap();
    for i in 0..100u16 {
        e.delete(&key(i)).unwrap();
    }
    for i in 100..150u16 {
        e.put(&key(i), b"TOMB-past-grace").unwrap();
    }
    e.compact().unwrap();
    let s = e.stats();
    assert_eq!(
        e.scan(Bound::Unbounded, Bound::Unbounded).unwrap().count(),
        50
    );
    assert!(e.get(&key(120)).unwrap().is_none());
    assert_eq!(e.get(&key(170)).unwrap(), Some(value(170, 170)));
    // Only the 50 live entries remain on disk.
    let entries: u64 = s.level_tables.iter().sum::<usize>() as u64;
    assert!(entries >= 1);
    assert_eq!(s.level_tables[0], 0);
}

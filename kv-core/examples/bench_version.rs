//! Micro-benchmark of the version module: DVV sync of sets with 3 siblings, plus update,
//! encode and decode of such a set. Prints operations per second; not run in CI.
//!
//! Run: `cargo run --release -p kv-core --example bench_version`

use std::hint::black_box;
use std::time::{Duration, Instant};

use kv_core::version::{SiblingSet, VersionVector};

/// Runs `op` in batches until `budget` has passed; returns operations per second.
fn measure(budget: Duration, mut op: impl FnMut()) -> f64 {
    let start = Instant::now();
    let mut ops: u64 = 0;
    while start.elapsed() < budget {
        for _ in 0..1_000 {
            op();
        }
        ops += 1_000;
    }
    ops as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let value = vec![b'x'; 100];
    // A common past: two concurrent writes through node-1 and node-2.
    let mut base = SiblingSet::new();
    for (i, actor) in ["node-1#1", "node-2#1"].iter().enumerate() {
        base.update(
            &VersionVector::new(),
            actor,
            Some(value.clone()),
            1_000 + i as u64,
        );
    }
    // Replica a then got a concurrent blind write through node-3: 3 siblings.
    let mut a = base.clone();
    a.update(
        &VersionVector::new(),
        "node-3#1",
        Some(value.clone()),
        1_500,
    );
    // Replica b: a client resolved the two, then two more blind writes: 3 siblings. The sync
    // must drop a's two overwritten siblings and keep the other four.
    let mut b = base.clone();
    let ctx = b.context().clone();
    b.update(&ctx, "node-2#1", Some(value.clone()), 2_000);
    b.update(
        &VersionVector::new(),
        "node-1#1",
        Some(value.clone()),
        2_001,
    );
    b.update(
        &VersionVector::new(),
        "node-2#1",
        Some(value.clone()),
        2_002,
    );
    let merged = a.synced(&b);
    assert_eq!(merged.siblings().len(), 4);

    let budget = Duration::from_secs(1);
    let sync = measure(budget, || {
        let mut x = black_box(&a).clone();
        x.sync(black_box(&b));
        black_box(x);
    });
    let clone = measure(budget, || {
        black_box(black_box(&a).clone());
    });
    let bytes = merged.encode();
    let encode = measure(budget, || {
        black_box(black_box(&merged).encode());
    });
    let decode = measure(budget, || {
        black_box(SiblingSet::decode(black_box(&bytes)).is_ok());
    });
    let update_ctx = merged.context().clone();
    let update = measure(budget, || {
        let mut x = black_box(&merged).clone();
        black_box(x.update(&update_ctx, "node-1#1", Some(value.clone()), 3_000));
    });
    println!(
        "sibling sets: a {} siblings, b {} siblings, merged {} siblings, {} bytes encoded",
        a.siblings().len(),
        b.siblings().len(),
        merged.siblings().len(),
        bytes.len()
    );
    println!("dvv sync (clone + sync, 3 siblings): {sync:>12.0} ops/s");
    println!("  of which clone alone:              {clone:>12.0} ops/s");
    println!("encode (4 siblings):                 {encode:>12.0} ops/s");
    println!("decode (4 siblings):                 {decode:>12.0} ops/s");
    println!("update with context (clone + write): {update:>12.0} ops/s");
}

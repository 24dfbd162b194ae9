//! Preference-list lookups per second on a 10-node ring (not run in CI).
//!
//! `cargo run --release -p kv-core --example bench_ring [lookups]`
//!
//! Prints, for each case, lookups/s of `preference_list` (hash + binary search + a copy of the
//! precomputed list), of `cached_preference_list` (borrowed, no allocation) and of a placement
//! that was not prepared (computed per lookup), plus the same from two threads sharing the ring.

use std::hint::black_box;
use std::time::Instant;

use kv_core::hash::key_token;
use kv_core::ring::{NodeInfo, Placement, Ring, DEFAULT_VNODES_PER_WEIGHT};

fn ring_of(nodes: &[(&str, &str)]) -> Ring {
    let mut ring = Ring::new();
    for (i, (dc, rack)) in nodes.iter().enumerate() {
        let info = NodeInfo {
            id: format!("node-{i}"),
            addr: format!("127.0.0.1:{}", 7000 + i),
            dc: dc.to_string(),
            rack: rack.to_string(),
            weight: 1,
        };
        let tokens = ring.allocate_tokens(1, i as u64);
        ring.insert(info, tokens);
    }
    ring
}

fn rate(count: usize, f: impl FnOnce()) -> f64 {
    let start = Instant::now();
    f();
    count as f64 / start.elapsed().as_secs_f64()
}

fn bench(name: &str, ring: &Ring, placement: &Placement, keys: &[Vec<u8>]) {
    let mut prepared = ring.clone();
    prepared.prepare(placement);
    let owned = rate(keys.len(), || {
        for k in keys {
            black_box(prepared.preference_list(black_box(k), placement));
        }
    });
    let borrowed = rate(keys.len(), || {
        for k in keys {
            black_box(prepared.cached_preference_list(key_token(black_box(k)), placement));
        }
    });
    let unprepared_keys = &keys[..keys.len() / 10];
    let computed = rate(unprepared_keys.len(), || {
        for k in unprepared_keys {
            black_box(ring.preference_list(black_box(k), placement));
        }
    });
    let threads = 2;
    let shared = rate(keys.len() * threads, || {
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    for k in keys {
                        black_box(prepared.preference_list(black_box(k), placement));
                    }
                });
            }
        });
    });
    println!(
        "{name:<34} preference_list {:>6.2} M/s | cached (borrowed) {:>6.2} M/s | not prepared {:>6.2} M/s | 2 threads {:>6.2} M/s",
        owned / 1e6,
        borrowed / 1e6,
        computed / 1e6,
        shared / 1e6
    );
}

fn main() {
    let lookups: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2_000_000);
    let keys: Vec<Vec<u8>> = (0..lookups)
        .map(|i| format!("user:{i:08}").into_bytes())
        .collect();
    println!(
        "{lookups} lookups per case, 10 nodes x {DEFAULT_VNODES_PER_WEIGHT} vnodes ({} ranges)",
        10 * DEFAULT_VNODES_PER_WEIGHT
    );

    let one_dc = ring_of(&[("dc1", "r1"); 10]);
    bench(
        "1 DC, Simple n=3",
        &one_dc,
        &Placement::Simple { n: 3 },
        &keys,
    );

    let two_dc: Vec<(&str, &str)> = (0..10)
        .map(|i| (["dc1", "dc2"][i % 2], ["r1", "r2"][(i / 2) % 2]))
        .collect();
    let two_dc = ring_of(&two_dc);
    bench(
        "2 DCs x 2 racks, Simple n=3",
        &two_dc,
        &Placement::Simple { n: 3 },
        &keys,
    );
    match Placement::parse("dc1:2,dc2:1") {
        Ok(per_dc) => bench("2 DCs x 2 racks, dc1:2,dc2:1", &two_dc, &per_dc, &keys),
        Err(e) => eprintln!("{e}"),
    }
}

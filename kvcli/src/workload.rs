//! Key choosers and operation mixes of `kvcli bench`, after YCSB's core workloads.
//!
//! Distributions, as YCSB defines them:
//! - `uniform`: every record equally likely;
//! - `zipfian`: YCSB's scrambled zipfian with theta 0.99: a zipfian rank over a huge item space
//!   is hashed (FNV-1a 64) onto the records, so the popular records are spread over the key
//!   space instead of clustered at its start;
//! - `latest`: YCSB's skewed-latest: the most recently inserted records are the most popular
//!   (record `newest - zipfian rank`).

use clap::ValueEnum;

/// A fast per-client random generator (xorshift64*); bench randomness needs speed, not secrecy.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded from `seed` (any value, zero included).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A uniform float in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A uniform integer in [0, n) (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
}

/// How keys are picked.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Distribution {
    /// Every record equally likely.
    Uniform,
    /// Scrambled zipfian (theta 0.99): a few records are hot, spread over the key space.
    Zipfian,
    /// The most recently inserted records are the hottest.
    Latest,
}

impl Distribution {
    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Distribution::Uniform => "uniform",
            Distribution::Zipfian => "zipfian",
            Distribution::Latest => "latest",
        }
    }
}

/// YCSB's zipfian constant.
pub const THETA: f64 = 0.99;

/// Item space of the scrambled zipfian and its zeta, as YCSB precomputes them
/// (`ScrambledZipfianGenerator.ITEM_COUNT` and `ZETAN`).
const SCRAMBLED_ITEMS: u64 = 10_000_000_000;
const SCRAMBLED_ZETAN: f64 = 26.469_028_201_783_02;

/// Zipfian ranks over `[0, n)`: rank 0 is the most popular (Gray et al., "Quickly generating
/// billion-record synthetic databases", as YCSB implements it).
#[derive(Debug, Clone)]
pub struct Zipfian {
    n: f64,
    alpha: f64,
    zetan: f64,
    eta: f64,
    half_pow_theta: f64,
}

/// zeta(n, theta) = sum over i in 1..=n of 1 / i^theta.
pub fn zeta(n: u64, theta: f64) -> f64 {
    (1..=n).map(|i| 1.0 / (i as f64).powf(theta)).sum()
}

impl Zipfian {
    /// Ranks over `n` items whose zeta is `zetan`.
    pub fn with_zeta(n: u64, zetan: f64) -> Zipfian {
        let n = n.max(1);
        let zeta2 = zeta(2, THETA);
        let nf = n as f64;
        Zipfian {
            n: nf,
            alpha: 1.0 / (1.0 - THETA),
            zetan,
            eta: (1.0 - (2.0 / nf).powf(1.0 - THETA)) / (1.0 - zeta2 / zetan),
            half_pow_theta: 0.5f64.powf(THETA),
        }
    }

    /// Ranks over `n` items (computes zeta in O(n)).
    pub fn new(n: u64) -> Zipfian {
        Zipfian::with_zeta(n, zeta(n.max(1), THETA))
    }

    /// The next rank, in `[0, n)`.
    pub fn next(&self, rng: &mut Rng) -> u64 {
        let u = rng.next_f64();
        let uz = u * self.zetan;
        if uz < 1.0 {
            return 0;
        }
        if uz < 1.0 + self.half_pow_theta {
            return 1.min(self.n as u64 - 1);
        }
        let r = (self.n * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        r.min(self.n as u64 - 1)
    }
}

/// FNV-1a over the 8 bytes of `v`, YCSB's scrambling hash.
pub fn fnv64(v: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in v.to_le_bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Picks record numbers for one distribution.
#[derive(Debug, Clone)]
pub enum KeyChooser {
    /// Uniform over the records.
    Uniform,
    /// Scrambled zipfian over the records.
    Zipfian(Zipfian),
    /// Skewed toward the newest record; ranks over the initial record count.
    Latest(Zipfian),
}

impl KeyChooser {
    /// A chooser for `dist` over `records` initial records.
    pub fn new(dist: Distribution, records: u64) -> KeyChooser {
        match dist {
            Distribution::Uniform => KeyChooser::Uniform,
            Distribution::Zipfian => {
                KeyChooser::Zipfian(Zipfian::with_zeta(SCRAMBLED_ITEMS, SCRAMBLED_ZETAN))
            }
            Distribution::Latest => KeyChooser::Latest(Zipfian::new(records)),
        }
    }

    /// A record number in `[0, count)`, `count` being the records that exist now (> 0).
    pub fn pick(&self, rng: &mut Rng, count: u64) -> u64 {
        let count = count.max(1);
        match self {
            KeyChooser::Uniform => rng.below(count),
            KeyChooser::Zipfian(z) => fnv64(z.next(rng)) % count,
            KeyChooser::Latest(z) => {
                let newest = count - 1;
                newest - z.next(rng).min(newest)
            }
        }
    }
}

/// What one bench operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    /// A get.
    Read,
    /// A put to an existing record (with the latest context the bench knows for it).
    Update,
    /// A put of a new record.
    Insert,
    /// A get, then a put with that get's context.
    ReadModifyWrite,
}

impl OpKind {
    /// Every kind, in report order.
    pub const ALL: [OpKind; 4] = [
        OpKind::Read,
        OpKind::Update,
        OpKind::Insert,
        OpKind::ReadModifyWrite,
    ];

    /// The name in reports.
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Read => "read",
            OpKind::Update => "update",
            OpKind::Insert => "insert",
            OpKind::ReadModifyWrite => "rmw",
        }
    }

    /// Position in [`OpKind::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// The workloads.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// Pure writes: updates of the --records keys, each with the key's causal context (the
    /// keys are written first), so an update replaces the value as a Redis SET does.
    Put,
    /// Pure reads, after loading --records keys.
    Get,
    /// YCSB A, update heavy: 50% reads, 50% updates.
    A,
    /// YCSB B, read mostly: 95% reads, 5% updates.
    B,
    /// YCSB C, read only.
    C,
    /// YCSB D, read latest: 95% reads, 5% inserts, latest distribution.
    D,
    /// YCSB F, read-modify-write: 50% reads, 50% get-then-put with the get's context.
    F,
}

impl Workload {
    /// The name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Put => "put",
            Workload::Get => "get",
            Workload::A => "a",
            Workload::B => "b",
            Workload::C => "c",
            Workload::D => "d",
            Workload::F => "f",
        }
    }

    /// A one-line description for the report.
    pub fn describe(self) -> &'static str {
        match self {
            Workload::Put => "100% put",
            Workload::Get => "100% get",
            Workload::A => "50% read, 50% update",
            Workload::B => "95% read, 5% update",
            Workload::C => "100% read",
            Workload::D => "95% read latest, 5% insert",
            Workload::F => "50% read, 50% read-modify-write",
        }
    }

    /// The distribution YCSB uses when none is given.
    pub fn default_distribution(self) -> Distribution {
        match self {
            Workload::Put | Workload::Get => Distribution::Uniform,
            Workload::D => Distribution::Latest,
            _ => Distribution::Zipfian,
        }
    }

    /// The operation to run next, drawn from the workload's mix.
    pub fn next_op(self, rng: &mut Rng) -> OpKind {
        let p = rng.below(100);
        match self {
            Workload::Put => OpKind::Update,
            Workload::Get | Workload::C => OpKind::Read,
            Workload::A if p < 50 => OpKind::Read,
            Workload::A => OpKind::Update,
            Workload::B if p < 95 => OpKind::Read,
            Workload::B => OpKind::Update,
            Workload::D if p < 95 => OpKind::Read,
            Workload::D => OpKind::Insert,
            Workload::F if p < 50 => OpKind::Read,
            Workload::F => OpKind::ReadModifyWrite,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_stays_in_range_and_covers_it() {
        let mut rng = Rng::new(1);
        let c = KeyChooser::new(Distribution::Uniform, 10);
        let mut seen = [0u32; 10];
        for _ in 0..10_000 {
            seen[c.pick(&mut rng, 10) as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n > 800 && n < 1200), "{seen:?}");
    }

    #[test]
    fn zipfian_is_skewed_and_in_range() {
        let mut rng = Rng::new(7);
        let z = Zipfian::new(1000);
        let mut counts = vec![0u32; 1000];
        for _ in 0..100_000 {
            counts[z.next(&mut rng) as usize] += 1;
        }
        // Rank 0 of a theta-0.99 zipfian over 1000 items draws about 1/zeta(1000) = 13%.
        let top = counts[0] as f64 / 100_000.0;
        assert!(top > 0.10 && top < 0.16, "rank 0 drew {top}");
        assert!(counts[0] > counts[10] && counts[10] > counts[500]);
    }

    #[test]
    fn scrambled_zipfian_spreads_the_hot_keys() {
        let mut rng = Rng::new(3);
        let c = KeyChooser::new(Distribution::Zipfian, 1000);
        let mut counts = vec![0u32; 1000];
        for _ in 0..100_000 {
            counts[c.pick(&mut rng, 1000) as usize] += 1;
        }
        let mut sorted = counts.clone();
        sorted.sort_unstable_by(|a, b| b.cmp(a));
        // Skewed: the 10 hottest keys draw far more than 1% of the operations...
        let hot: u32 = sorted[..10].iter().sum();
        assert!(hot > 10_000, "the 10 hottest keys drew only {hot}");
        // ...and they are not simply the first keys.
        let hottest = counts.iter().position(|&n| n == sorted[0]).unwrap();
        let first_ten: u32 = counts[..10].iter().sum();
        assert!(
            first_ten < hot,
            "hot keys clustered at the start ({hottest})"
        );
    }

    #[test]
    fn latest_prefers_the_newest_records() {
        let mut rng = Rng::new(5);
        let c = KeyChooser::new(Distribution::Latest, 1000);
        let mut newest = 0;
        for _ in 0..10_000 {
            let k = c.pick(&mut rng, 2000);
            assert!(k < 2000);
            if k >= 1990 {
                newest += 1;
            }
        }
        assert!(newest > 3000, "the 10 newest records drew only {newest}");
    }

    #[test]
    fn mixes_match_ycsb() {
        let mut rng = Rng::new(9);
        let mut reads = 0;
        for _ in 0..10_000 {
            if Workload::B.next_op(&mut rng) == OpKind::Read {
                reads += 1;
            }
        }
        assert!((9_300..9_700).contains(&reads), "{reads}");
        let ops: Vec<OpKind> = (0..1000).map(|_| Workload::F.next_op(&mut rng)).collect();
        assert!(ops.contains(&OpKind::ReadModifyWrite) && ops.contains(&OpKind::Read));
        assert!(!ops.contains(&OpKind::Update));
        assert!((0..1000).all(|_| Workload::C.next_op(&mut rng) == OpKind::Read));
    }
}

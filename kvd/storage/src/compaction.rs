//! Leveled compaction: choosing what to merge, and merging it into new tables.
//!
//! Leveled rather than size-tiered because reads (every replica read is a point lookup)
//! then touch at most one table per level >= 1, and space overhead stays near 1.1x; write
//! amplification is bounded by about `level_multiplier` per level.
//!
//! Level 0 is compacted into level 1 when it holds `l0_compaction_trigger` tables; level
//! `i >= 1` when its size exceeds `level1_bytes * level_multiplier^(i-1)`, one table at a time
//! in round-robin key order, merged with the overlapping tables of level `i + 1`.
//! Laws: tombstones and purgeable values are dropped only when the output level is the
//! bottommost non-empty level (nothing older lies below); of several versions of a key, only the
//! newest is kept.

use std::sync::Arc;

use crate::error::Result;
use crate::iter::{LevelIter, MergeIter, Source};
use crate::options::Options;
use crate::sstable::{BuildOptions, Table, TableBuilder, TableIter, TableMeta};
use crate::version::Version;

/// One compaction to run.
pub(crate) struct Job {
    /// Input tables per level, levels ascending (newest data first).
    pub(crate) inputs: Vec<(usize, Vec<Arc<Table>>)>,
    pub(crate) output_level: usize,
    /// May tombstones and purgeable values be dropped?
    pub(crate) bottommost: bool,
    /// A single table moved down a level without rewriting.
    pub(crate) trivial_move: bool,
}

impl Job {
    pub(crate) fn input_numbers(&self) -> impl Iterator<Item = u64> + '_ {
        self.inputs
            .iter()
            .flat_map(|(_, ts)| ts.iter().map(|t| t.meta.number))
    }

    pub(crate) fn input_bytes(&self) -> u64 {
        self.inputs
            .iter()
            .flat_map(|(_, ts)| ts.iter().map(|t| t.meta.size))
            .sum()
    }
}

/// Target size of `level` (>= 1).
pub(crate) fn level_target(opts: &Options, level: usize) -> u64 {
    let mut t = opts.level1_bytes.max(1);
    for _ in 1..level {
        t = t.saturating_mul(opts.level_multiplier.max(2));
    }
    t
}

/// The highest compaction score; >= 1.0 means a compaction is due.
pub(crate) fn score(v: &Version, opts: &Options) -> (f64, usize) {
    let mut best = (
        v.levels[0].len() as f64 / opts.l0_compaction_trigger.max(1) as f64,
        0,
    );
    for lvl in 1..v.levels.len() - 1 {
        let s = v.level_bytes(lvl) as f64 / level_target(opts, lvl) as f64;
        if s > best.0 {
            best = (s, lvl);
        }
    }
    best
}

fn key_range(tables: &[Arc<Table>]) -> (Vec<u8>, Vec<u8>) {
    let smallest = tables
        .iter()
        .map(|t| &t.meta.smallest)
        .min()
        .cloned()
        .unwrap_or_default();
    let largest = tables
        .iter()
        .map(|t| &t.meta.largest)
        .max()
        .cloned()
        .unwrap_or_default();
    (smallest, largest)
}

/// Picks the next compaction, if one is due. `pointers[level]` remembers where the last
/// compaction of that level ended, so a level is compacted round-robin across its key space.
pub(crate) fn pick(v: &Version, opts: &Options, pointers: &mut [Vec<u8>]) -> Option<Job> {
    let (s, level) = score(v, opts);
    if s < 1.0 {
        return None;
    }
    let inputs: Vec<Arc<Table>> = if level == 0 {
        v.levels[0].clone()
    } else {
        let l = &v.levels[level];
        let p = &pointers[level];
        let i = l.iter().position(|t| t.meta.smallest > *p).unwrap_or(0);
        vec![l.get(i)?.clone()]
    };
    let (smallest, largest) = key_range(&inputs);
    if level > 0 {
        pointers[level] = largest.clone();
    }
    let out = level + 1;
    let below = v.overlapping(out, &smallest, &largest);
    let trivial_move = below.is_empty() && inputs.len() == 1;
    let mut job_inputs = vec![(level, inputs)];
    if !below.is_empty() {
        job_inputs.push((out, below));
    }
    Some(Job {
        inputs: job_inputs,
        output_level: out,
        bottommost: v.is_bottommost(out),
        trivial_move,
    })
}

/// A full compaction of every table into the deepest non-empty level (at least 1).
pub(crate) fn full(v: &Version) -> Option<Job> {
    let deepest = (0..v.levels.len())
        .rev()
        .find(|&l| !v.levels[l].is_empty())?;
    let output_level = deepest.max(1);
    let inputs: Vec<(usize, Vec<Arc<Table>>)> = v
        .levels
        .iter()
        .enumerate()
        .filter(|(_, l)| !l.is_empty())
        .map(|(i, l)| (i, l.clone()))
        .collect();
    Some(Job {
        inputs,
        output_level,
        bottommost: true,
        trivial_move: false,
    })
}

/// Merges the job's inputs into new tables of at most `opts.table_bytes`, numbered by
/// `alloc`. Returns the finished tables (each fsynced) and the bytes read.
pub(crate) fn run(
    job: &Job,
    dir: &std::path::Path,
    opts: &Options,
    build: BuildOptions,
    mut alloc: impl FnMut() -> u64,
) -> Result<Vec<TableMeta>> {
    let mut sources = Vec::new();
    for (level, tables) in &job.inputs {
        if *level == 0 {
            for t in tables.iter().rev() {
                sources.push(Source::Table(TableIter::new(t.clone(), None, None)?));
            }
        } else {
            sources.push(Source::Level(LevelIter::new(tables.clone(), None, None)));
        }
    }
    let mut merge = MergeIter::new(sources)?;
    let mut outputs = Vec::new();
    let mut builder: Option<TableBuilder> = None;
    let result = (|| -> Result<()> {
        while let Some((key, value)) = merge.next_entry()? {
            if job.bottommost {
                match &value {
                    None => continue,
                    Some(v) => {
                        if let Some(purge) = &opts.tombstone_purge {
                            if purge(&key, v) {
                                continue;
                            }
                        }
                    }
                }
            }
            let b = match builder.as_mut() {
                Some(b) => b,
                None => builder.insert(TableBuilder::create(dir, alloc(), build)?),
            };
            b.add(&key, value.as_deref())?;
            if b.file_size() >= opts.table_bytes {
                if let Some(b) = builder.take() {
                    outputs.push(b.finish()?);
                }
            }
        }
        if let Some(b) = builder.take() {
            if !b.is_empty() {
                outputs.push(b.finish()?);
            } else {
                b.abandon();
            }
        }
        Ok(())
    })();
    if let Err(e) = result {
        if let Some(b) = builder.take() {
            b.abandon();
        }
        for m in &outputs {
            let _ = std::fs::remove_file(crate::sstable::table_path(dir, m.number));
        }
        return Err(e);
    }
    Ok(outputs)
}

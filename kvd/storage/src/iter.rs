//! Merging iterators over memtables and tables, and the public `Scan`.
//!
//! Sources are ordered newest first; when several hold the same key, the newest source's
//! entry wins and the others are skipped. Law: the merged stream is strictly increasing in key.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::ops::Bound;
use std::sync::Arc;

use crate::cache::BlockCache;
use crate::coding::compare_keys;
use crate::error::Result;
use crate::memtable::{Entry, MemIter};
use crate::sstable::{Table, TableIter};

/// One input of a merge.
pub(crate) enum Source {
    /// A memtable at a fixed snapshot.
    Mem(MemIter),
    /// One table (level 0, where tables overlap).
    Table(TableIter),
    /// The tables of one level >= 1, sorted and disjoint, opened one after the other.
    Level(LevelIter),
}

impl Source {
    fn next(&mut self) -> Result<Option<(Vec<u8>, Entry)>> {
        match self {
            Source::Mem(it) => Ok(it.next_owned()),
            Source::Table(t) => t.next_owned(),
            Source::Level(l) => l.next(),
        }
    }
}

/// Concatenates the disjoint, sorted tables of one level.
pub(crate) struct LevelIter {
    tables: Vec<Arc<Table>>,
    next_table: usize,
    cur: Option<TableIter>,
    start: Option<Vec<u8>>,
    cache: Option<Arc<BlockCache>>,
}

impl LevelIter {
    /// `tables` sorted by key; iteration starts at the first key >= `start`.
    pub(crate) fn new(
        tables: Vec<Arc<Table>>,
        start: Option<Vec<u8>>,
        cache: Option<Arc<BlockCache>>,
    ) -> LevelIter {
        let first = match &start {
            Some(s) => tables.partition_point(|t| t.meta.largest.as_slice() < s.as_slice()),
            None => 0,
        };
        LevelIter {
            tables,
            next_table: first,
            cur: None,
            start,
            cache,
        }
    }

    fn next(&mut self) -> Result<Option<(Vec<u8>, Entry)>> {
        loop {
            if let Some(cur) = self.cur.as_mut() {
                if let Some(e) = cur.next_owned()? {
                    return Ok(Some(e));
                }
                self.cur = None;
            }
            let Some(t) = self.tables.get(self.next_table) else {
                return Ok(None);
            };
            self.next_table += 1;
            // Only the first table opened needs the seek; later ones start past `start`.
            let start = self.start.take();
            self.cur = Some(TableIter::new(
                t.clone(),
                self.cache.clone(),
                start.as_deref(),
            )?);
        }
    }
}

struct Head {
    key: Vec<u8>,
    value: Entry,
    /// Source index: lower is newer.
    src: usize,
}

impl PartialEq for Head {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Head {}
impl PartialOrd for Head {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Head {
    // BinaryHeap pops the greatest: invert so the smallest key, then the newest source, is on top.
    fn cmp(&self, o: &Self) -> Ordering {
        compare_keys(&o.key, &self.key).then(o.src.cmp(&self.src))
    }
}

/// K-way merge of sources, newest version of each key first.
pub(crate) struct MergeIter {
    sources: Vec<Source>,
    heap: BinaryHeap<Head>,
}

impl MergeIter {
    /// `sources` ordered newest first.
    pub(crate) fn new(mut sources: Vec<Source>) -> Result<MergeIter> {
        let mut heap = BinaryHeap::with_capacity(sources.len());
        for (src, s) in sources.iter_mut().enumerate() {
            if let Some((key, value)) = s.next()? {
                heap.push(Head { key, value, src });
            }
        }
        Ok(MergeIter { sources, heap })
    }

    fn refill(&mut self, src: usize) -> Result<()> {
        if let Some((key, value)) = self.sources[src].next()? {
            self.heap.push(Head { key, value, src });
        }
        Ok(())
    }

    /// The next key with its newest entry (tombstones included).
    pub(crate) fn next_entry(&mut self) -> Result<Option<(Vec<u8>, Entry)>> {
        let Some(top) = self.heap.pop() else {
            return Ok(None);
        };
        self.refill(top.src)?;
        while let Some(h) = self.heap.peek() {
            if h.key != top.key {
                break;
            }
            if let Some(older) = self.heap.pop() {
                self.refill(older.src)?;
            }
        }
        Ok(Some((top.key, top.value)))
    }
}

/// An ordered scan over a consistent snapshot of the engine (see `Engine::scan`).
/// Yields `(key, value)` pairs; an error ends the scan.
pub struct Scan {
    merge: Option<MergeIter>,
    start_excluded: Option<Vec<u8>>,
    end: Bound<Vec<u8>>,
}

impl Scan {
    pub(crate) fn new(merge: MergeIter, start: Bound<&[u8]>, end: Bound<&[u8]>) -> Scan {
        Scan {
            merge: Some(merge),
            start_excluded: match start {
                Bound::Excluded(s) => Some(s.to_vec()),
                _ => None,
            },
            end: match end {
                Bound::Included(e) => Bound::Included(e.to_vec()),
                Bound::Excluded(e) => Bound::Excluded(e.to_vec()),
                Bound::Unbounded => Bound::Unbounded,
            },
        }
    }
}

impl Iterator for Scan {
    type Item = Result<(Vec<u8>, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let m = self.merge.as_mut()?;
            let (k, v) = match m.next_entry() {
                Ok(Some(e)) => e,
                Ok(None) => {
                    self.merge = None;
                    return None;
                }
                Err(e) => {
                    self.merge = None;
                    return Some(Err(e));
                }
            };
            let past_end = match &self.end {
                Bound::Included(e) => k.as_slice() > e.as_slice(),
                Bound::Excluded(e) => k.as_slice() >= e.as_slice(),
                Bound::Unbounded => false,
            };
            if past_end {
                self.merge = None;
                return None;
            }
            if let Some(s) = &self.start_excluded {
                if k.as_slice() <= s.as_slice() {
                    continue;
                }
            }
            if let Some(v) = v {
                return Some(Ok((k, v)));
            }
        }
    }
}

//! A version: the immutable set of live tables per level at one moment.
//!
//! Laws: level 0 is ordered by file number (oldest first), its tables may overlap, and a newer
//! level-0 table holds newer data than an older one. Each level >= 1 is sorted by key and its
//! tables' key ranges are disjoint. Data in a lower-numbered level is newer than data in a
//! higher-numbered one for the same key.

use std::collections::HashSet;
use std::sync::Arc;

use crate::manifest::ManifestData;
use crate::sstable::Table;

/// The live tables.
pub(crate) struct Version {
    pub(crate) levels: Vec<Vec<Arc<Table>>>,
}

impl Version {
    pub(crate) fn empty(num_levels: usize) -> Version {
        Version {
            levels: vec![Vec::new(); num_levels],
        }
    }

    /// A new version without the tables in `removed` and with `added` (level, table).
    pub(crate) fn with_edit(
        &self,
        removed: &HashSet<u64>,
        added: Vec<(usize, Arc<Table>)>,
    ) -> Version {
        let mut levels: Vec<Vec<Arc<Table>>> = self
            .levels
            .iter()
            .map(|l| {
                l.iter()
                    .filter(|t| !removed.contains(&t.meta.number))
                    .cloned()
                    .collect()
            })
            .collect();
        for (lvl, t) in added {
            levels[lvl].push(t);
        }
        levels[0].sort_by_key(|t| t.meta.number);
        for l in levels.iter_mut().skip(1) {
            l.sort_by(|a, b| a.meta.smallest.cmp(&b.meta.smallest));
        }
        Version { levels }
    }

    pub(crate) fn to_manifest(&self, next_file: u64, log_number: u64) -> ManifestData {
        ManifestData {
            next_file,
            log_number,
            tables: self
                .levels
                .iter()
                .enumerate()
                .flat_map(|(i, l)| l.iter().map(move |t| (i, t.meta.clone())))
                .collect(),
        }
    }

    pub(crate) fn level_bytes(&self, level: usize) -> u64 {
        self.levels[level].iter().map(|t| t.meta.size).sum()
    }

    pub(crate) fn table_count(&self) -> usize {
        self.levels.iter().map(Vec::len).sum()
    }

    /// Tables of `level` whose range intersects [smallest, largest].
    pub(crate) fn overlapping(
        &self,
        level: usize,
        smallest: &[u8],
        largest: &[u8],
    ) -> Vec<Arc<Table>> {
        self.levels[level]
            .iter()
            .filter(|t| {
                t.meta.largest.as_slice() >= smallest && t.meta.smallest.as_slice() <= largest
            })
            .cloned()
            .collect()
    }

    /// True when no level below `level` holds any table: nothing older can hide under it.
    pub(crate) fn is_bottommost(&self, level: usize) -> bool {
        self.levels.iter().skip(level + 1).all(Vec::is_empty)
    }

    /// Checks the level laws, naming the first table that breaks them.
    pub(crate) fn check(&self) -> Result<(), String> {
        for (i, l) in self.levels.iter().enumerate().skip(1) {
            for w in l.windows(2) {
                if w[0].meta.largest >= w[1].meta.smallest {
                    return Err(format!(
                        "level {i}: tables {} and {} overlap",
                        w[0].meta.number, w[1].meta.number
                    ));
                }
            }
        }
        Ok(())
    }
}

//! Entry points into the engine's private readers for the fuzz targets in `tests/fuzz` and
//! for the regression tests that replay what they found (`tests/fuzz_regressions.rs`).
//!
//! Every function here calls the same code the engine runs on open and on reads; none is a
//! copy of it. They are hidden from the documentation because nothing but those tests should
//! depend on them, and their shape may change with the formats.
//!
//! Law: whatever the bytes, every reader returns a value or an error; none panics, loops or
//! allocates more than a small multiple of its input.

use std::path::Path;
use std::sync::Arc;

use crate::batch::WriteBatch;
use crate::block::{Block, BlockBuilder};
use crate::error::Result;
use crate::sstable::{block_trailer, encode_footer, table_path, Table, TableIter};

/// A key and its value (`None` for a tombstone), as a reader returned it.
pub type Entry = (Vec<u8>, Option<Vec<u8>>);

/// What replaying a commit-log segment gave.
#[derive(Debug, Default)]
pub struct Replay {
    /// The batches applied, in order.
    pub batches: Vec<WriteBatch>,
    /// Where replay stopped before the end of the data, and why.
    pub cut: Option<(u64, String)>,
}

/// Replays a commit-log segment whose contents are `data` (the reader `Engine::open` uses).
pub fn replay_commit_log(data: &[u8]) -> Replay {
    let mut batches = Vec::new();
    let r = crate::commit_log::replay_bytes(data, false, |b| batches.push(b));
    Replay {
        batches,
        cut: r.cut,
    }
}

/// One commit-log frame (length, crc32, payload) holding `batch`, as the writer appends it.
pub fn frame_batch(batch: &WriteBatch) -> Vec<u8> {
    let mut out = Vec::new();
    crate::commit_log::frame_batch(batch, &mut out);
    out
}

/// One commit-log frame with a valid length and checksum around an arbitrary `payload`, so a
/// fuzzer reaches the batch decoder behind the checksum.
pub fn frame_payload(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + crate::commit_log::FRAME_HEADER);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Decodes a commit-log record payload.
pub fn decode_write_batch(payload: &[u8]) -> Option<WriteBatch> {
    WriteBatch::decode(payload)
}

/// Encodes sorted, distinct entries as one block with a restart point every
/// `restart_interval` entries (the table writer's block builder).
pub fn build_block(entries: &[Entry], restart_interval: usize) -> Vec<u8> {
    let mut b = BlockBuilder::new(restart_interval);
    for (k, v) in entries {
        b.add(k, v.as_deref());
    }
    b.finish()
}

/// Parses block contents and walks every entry, then seeks to `target` and reads what follows
/// it. Returns the entries in block order and the entry the seek landed on.
pub fn read_block(
    contents: Vec<u8>,
    target: &[u8],
) -> std::result::Result<(Vec<Entry>, Option<Entry>), &'static str> {
    let block = Arc::new(Block::new(contents)?);
    let mut entries = Vec::new();
    let mut it = block.iter();
    while it.advance()? {
        entries.push((it.key().to_vec(), it.value().map(<[u8]>::to_vec)));
    }
    let mut it = block.iter();
    let found = if it.seek(target)? {
        Some((it.key().to_vec(), it.value().map(<[u8]>::to_vec)))
    } else {
        None
    };
    // Reading on after a seek must not go wrong either.
    for _ in 0..2 {
        if !it.advance()? {
            break;
        }
    }
    Ok((entries, found))
}

/// Looks `key` up in a block the way a point read does (seek, then compare the key).
pub fn block_get(
    contents: Vec<u8>,
    key: &[u8],
) -> std::result::Result<Option<Entry>, &'static str> {
    let block = Arc::new(Block::new(contents)?);
    let mut it = block.iter();
    if it.seek(key)? && it.key() == key {
        return Ok(Some((it.key().to_vec(), it.value().map(<[u8]>::to_vec))));
    }
    Ok(None)
}

/// LZ4-compresses block contents as the table writer stores a compressed block (kind 1).
pub fn lz4_compress(contents: &[u8]) -> Vec<u8> {
    lz4_flex::block::compress_prepend_size(contents)
}

/// A block as stored in a table: its bytes and the compression kind (0 raw, 1 lz4).
#[derive(Clone, Debug)]
pub struct StoredBlock {
    /// The stored bytes (compressed when `kind` is 1).
    pub bytes: Vec<u8>,
    /// The kind byte written into the trailer.
    pub kind: u8,
}

/// Lays out a table file the way the table writer does: the data blocks, then the filter,
/// index and meta blocks, each followed by a correct trailer, then a correct footer. `index`
/// is the index block's contents; `None` builds it (with the real block builder) from
/// `index_keys`, one last key per data block, pointing at the data blocks.
pub fn assemble_table(
    data: &[StoredBlock],
    filter: &[u8],
    index: Option<Vec<u8>>,
    index_keys: &[Vec<u8>],
    meta: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    let put = |out: &mut Vec<u8>, bytes: &[u8], kind: u8| -> (u64, u64) {
        let off = out.len() as u64;
        out.extend_from_slice(bytes);
        out.extend_from_slice(&block_trailer(bytes, kind));
        (off, bytes.len() as u64)
    };
    let mut handles = Vec::new();
    for b in data {
        handles.push(put(&mut out, &b.bytes, b.kind));
    }
    let (foff, flen) = put(&mut out, filter, 0);
    let index = index.unwrap_or_else(|| {
        let mut ib = BlockBuilder::new(1);
        for (key, (off, len)) in index_keys.iter().zip(&handles) {
            let mut h = Vec::new();
            crate::coding::put_varint(&mut h, *off);
            crate::coding::put_varint(&mut h, *len);
            ib.add(key, Some(&h));
        }
        ib.finish()
    });
    let (ioff, ilen) = put(&mut out, &index, 0);
    let (moff, mlen) = put(&mut out, meta, 0);
    out.extend_from_slice(&encode_footer([foff, flen, ioff, ilen, moff, mlen]));
    out
}

/// Encodes a meta block: smallest and largest key, entry and tombstone counts.
pub fn encode_meta(smallest: &[u8], largest: &[u8], entries: u64, tombstones: u64) -> Vec<u8> {
    let mut m = Vec::new();
    crate::coding::put_bytes(&mut m, smallest);
    crate::coding::put_bytes(&mut m, largest);
    crate::coding::put_varint(&mut m, entries);
    crate::coding::put_varint(&mut m, tombstones);
    m
}

/// What reading a whole table gave.
#[derive(Debug, Default)]
pub struct TableRead {
    /// Every entry, in the order a scan returns them.
    pub entries: Vec<Entry>,
    /// For each key read by point lookup (every scanned key and every probe that passed the
    /// range and bloom checks), what the lookup found.
    pub gets: Vec<(Vec<u8>, Lookup)>,
}

/// What a point read of one table found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// A value.
    Found(Vec<u8>),
    /// A tombstone.
    Deleted,
    /// Nothing for that key.
    Absent,
}

impl Lookup {
    /// As an optional entry value: `Some(Some(v))` found, `Some(None)` deleted, `None` absent.
    pub fn as_entry_value(&self) -> Option<Option<&[u8]>> {
        match self {
            Lookup::Found(v) => Some(Some(v)),
            Lookup::Deleted => Some(None),
            Lookup::Absent => None,
        }
    }
}

/// Writes `file` as table 1 in `dir` (replacing any), opens it as the engine does (footer,
/// filter, index and meta checked), scans it whole, then point-reads each scanned key and
/// each of `probes` the way the engine's read path does (range, then bloom, then index and
/// block). The first error stops the read and is returned.
pub fn read_table(dir: &Path, file: &[u8], probes: &[&[u8]]) -> Result<TableRead> {
    let path = table_path(dir, 1);
    std::fs::write(&path, file).map_err(|e| crate::error::Error::io(&path, e))?;
    let table = Arc::new(Table::open(dir, 1, None)?);
    let mut out = TableRead::default();
    let mut it = TableIter::new(table.clone(), None, None)?;
    while let Some((k, v)) = it.next_owned()? {
        out.entries.push((k, v));
    }
    let keys: Vec<Vec<u8>> = out.entries.iter().map(|(k, _)| k.clone()).collect();
    for key in keys.iter().map(Vec::as_slice).chain(probes.iter().copied()) {
        if !table.covers(key) || !table.may_contain(crate::bloom::hash_key(key)) {
            continue;
        }
        // Without a cache there is no cache-only answer: the lookup always reads the block.
        let got = match table.get(key, None, false)? {
            Some(crate::memtable::Lookup::Found(v)) => Lookup::Found(v),
            Some(crate::memtable::Lookup::Deleted) => Lookup::Deleted,
            Some(crate::memtable::Lookup::Absent) | None => Lookup::Absent,
        };
        out.gets.push((key.to_vec(), got));
    }
    // A scan starting inside the table takes the seek path of the iterator.
    for start in probes {
        let mut it = TableIter::new(table.clone(), None, Some(start))?;
        for _ in 0..4 {
            if it.next_entry()?.is_none() {
                break;
            }
        }
    }
    Ok(out)
}

/// Builds a bloom filter over `keys` with `bits_per_key` bits per key.
pub fn bloom_build(keys: &[&[u8]], bits_per_key: usize) -> Vec<u8> {
    let hashes: Vec<u64> = keys.iter().map(|k| crate::bloom::hash_key(k)).collect();
    crate::bloom::build(&hashes, bits_per_key)
}

/// Whether `filter` (as stored in a table) may contain `key`.
pub fn bloom_may_contain(filter: &[u8], key: &[u8]) -> bool {
    crate::bloom::may_contain(filter, crate::bloom::hash_key(key))
}

/// One table as a manifest lists it: level, file number, size, entries, smallest and largest
/// key.
pub type ManifestTable = (usize, u64, u64, u64, Vec<u8>, Vec<u8>);

/// Decodes a manifest's bytes as `Engine::open` reads them: `next_file`, `log_number` and the
/// live tables.
pub fn decode_manifest(bytes: &[u8]) -> Result<(u64, u64, Vec<ManifestTable>)> {
    let m = crate::manifest::ManifestData::decode(Path::new(crate::manifest::MANIFEST), bytes)?;
    let tables = m
        .tables
        .into_iter()
        .map(|(level, t)| (level, t.number, t.size, t.entries, t.smallest, t.largest))
        .collect();
    Ok((m.next_file, m.log_number, tables))
}

/// A manifest around an arbitrary `payload`: the magic, the format version, the payload and a
/// valid checksum, so a fuzzer reaches the decoder behind the checksum.
pub fn seal_manifest(payload: &[u8]) -> Vec<u8> {
    let mut out = crate::manifest::ManifestData::default().encode();
    // An empty manifest is magic, version, three zero varints and the crc: keep the first 12.
    out.truncate(12);
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

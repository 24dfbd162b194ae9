//! SSTables: immutable sorted files of data blocks, an index, a bloom filter and a footer.
//!
//! Layout: data blocks | filter block | index block | meta block | footer (64 bytes).
//! Every block carries a crc32 trailer (see `block`); the footer has its own crc32, a format
//! version and a magic number. The index is a block whose keys are the last key of each data
//! block and whose values are `offset: varint, size: varint` handles. The meta block holds the
//! smallest and largest key and entry counts.
//!
//! Law: a table never returns bytes that failed a check; every failed check is reported as
//! `Error::Corruption` with this file and the offset of the bad block.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::block::{Block, BlockBuilder, BlockIter, TRAILER};
use crate::bloom;
use crate::cache::BlockCache;
use crate::coding::{get_bytes, get_u32, get_u64, get_varint, put_bytes, put_varint};
use crate::error::{Error, Result};
use crate::memtable::{Entry, Lookup};

const MAGIC: u64 = 0x6b76_6473_7374_626c; // "kvdsstbl"
const FORMAT_VERSION: u32 = 1;
const FOOTER: usize = 64;
const RAW: u8 = 0;
const LZ4: u8 = 1;
/// Law of the LZ4 block format: one stored byte expands to at most 255 bytes (a match length
/// grows by at most 255 per length byte), so no valid block decompresses to more than this
/// many times its size after the 4-byte size prefix.
const LZ4_MAX_EXPANSION: u64 = 255;

/// Name of table `number` inside the data directory.
pub(crate) fn table_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:06}.sst"))
}

/// Settings a table is written with.
#[derive(Clone, Copy)]
pub(crate) struct BuildOptions {
    pub(crate) block_bytes: usize,
    pub(crate) restart_interval: usize,
    pub(crate) compression: bool,
    pub(crate) bloom_bits_per_key: usize,
}

/// Summary of a finished table, as recorded in the manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TableMeta {
    pub(crate) number: u64,
    pub(crate) size: u64,
    pub(crate) smallest: Vec<u8>,
    pub(crate) largest: Vec<u8>,
    pub(crate) entries: u64,
}

/// Writes a table from entries added in increasing key order.
pub(crate) struct TableBuilder {
    path: PathBuf,
    number: u64,
    out: BufWriter<File>,
    offset: u64,
    opts: BuildOptions,
    data: BlockBuilder,
    index: BlockBuilder,
    hashes: Vec<u64>,
    smallest: Option<Vec<u8>>,
    entries: u64,
    tombstones: u64,
    scratch: Vec<u8>,
    /// Where each finished data block also goes, decoded, as it is written.
    warm: Option<Arc<BlockCache>>,
}

impl TableBuilder {
    pub(crate) fn create(dir: &Path, number: u64, opts: BuildOptions) -> Result<TableBuilder> {
        let path = table_path(dir, number);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        Ok(TableBuilder {
            path,
            number,
            out: BufWriter::with_capacity(256 << 10, file),
            offset: 0,
            opts,
            data: BlockBuilder::new(opts.restart_interval),
            index: BlockBuilder::new(1),
            hashes: Vec::new(),
            smallest: None,
            entries: 0,
            tombstones: 0,
            scratch: Vec::new(),
            warm: None,
        })
    }

    /// Puts each data block into `cache` as it is written, so the first reads of a table just
    /// written find its blocks without a disk read (RocksDB's `prepopulate_block_cache`).
    /// The cache keys blocks by table number, which is never reused within a process, so
    /// blocks of a table that is abandoned only wait for eviction.
    pub(crate) fn warm_cache(mut self, cache: Arc<BlockCache>) -> TableBuilder {
        self.warm = Some(cache);
        self
    }

    /// Adds an entry (`None` = tombstone). Keys must be strictly increasing.
    pub(crate) fn add(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<()> {
        if self.smallest.is_none() {
            self.smallest = Some(key.to_vec());
        }
        if self.opts.bloom_bits_per_key > 0 {
            self.hashes.push(bloom::hash_key(key));
        }
        self.data.add(key, value);
        self.entries += 1;
        if value.is_none() {
            self.tombstones += 1;
        }
        if self.data.size_estimate() >= self.opts.block_bytes {
            self.finish_data_block()?;
        }
        Ok(())
    }

    /// Bytes written so far (an estimate of the final file size).
    pub(crate) fn file_size(&self) -> u64 {
        self.offset + self.data.size_estimate() as u64
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries == 0
    }

    fn finish_data_block(&mut self) -> Result<()> {
        if self.data.is_empty() {
            return Ok(());
        }
        let last = self.data.last_key().to_vec();
        let contents = self.data.finish();
        let (off, len) = self.write_block(&contents, self.opts.compression)?;
        self.scratch.clear();
        put_varint(&mut self.scratch, off);
        put_varint(&mut self.scratch, len);
        let handle = std::mem::take(&mut self.scratch);
        self.index.add(&last, Some(&handle));
        self.scratch = handle;
        if let Some(cache) = &self.warm {
            let mut contents = contents;
            // The builder's buffer grows past its reserve only for large entries; the cache
            // charges capacity, so give the slack back before it is charged for.
            if contents.capacity() - contents.len() > 1024 {
                contents.shrink_to_fit();
            }
            if let Ok(block) = Block::new(contents) {
                cache.insert(self.number, off, Arc::new(block));
            }
        }
        Ok(())
    }

    /// Writes a block with its trailer; returns (offset, stored length without trailer).
    fn write_block(&mut self, contents: &[u8], compress: bool) -> Result<(u64, u64)> {
        let compressed;
        let (stored, kind): (&[u8], u8) = if compress {
            compressed = lz4_flex::block::compress_prepend_size(contents);
            // Keep the raw form when compression saves less than 1/8: decoding costs more
            // than the bytes saved.
            if compressed.len() < contents.len() - contents.len() / 8 {
                (&compressed, LZ4)
            } else {
                (contents, RAW)
            }
        } else {
            (contents, RAW)
        };
        let off = self.offset;
        let p = &self.path;
        self.out.write_all(stored).map_err(|e| Error::io(p, e))?;
        self.out
            .write_all(&block_trailer(stored, kind))
            .map_err(|e| Error::io(p, e))?;
        self.offset += (stored.len() + TRAILER) as u64;
        Ok((off, stored.len() as u64))
    }

    /// Writes filter, index, meta and footer, fsyncs the file, and returns its summary.
    pub(crate) fn finish(mut self) -> Result<TableMeta> {
        // When `add` already closed the last block, its last key is the index's last key.
        let largest = if self.data.is_empty() {
            self.index.last_key().to_vec()
        } else {
            self.data.last_key().to_vec()
        };
        self.finish_data_block()?;
        let filter = if self.opts.bloom_bits_per_key > 0 {
            bloom::build(&self.hashes, self.opts.bloom_bits_per_key)
        } else {
            Vec::new()
        };
        let (foff, flen) = self.write_block(&filter, false)?;
        let index = self.index.finish();
        let (ioff, ilen) = self.write_block(&index, false)?;
        let mut meta = Vec::new();
        let smallest = self.smallest.clone().unwrap_or_default();
        put_bytes(&mut meta, &smallest);
        put_bytes(&mut meta, &largest);
        put_varint(&mut meta, self.entries);
        put_varint(&mut meta, self.tombstones);
        let (moff, mlen) = self.write_block(&meta, false)?;
        let footer = encode_footer([foff, flen, ioff, ilen, moff, mlen]);
        let p = self.path.clone();
        self.out.write_all(&footer).map_err(|e| Error::io(&p, e))?;
        self.offset += FOOTER as u64;
        let file = self
            .out
            .into_inner()
            .map_err(|e| Error::io(&p, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(&p, e))?;
        Ok(TableMeta {
            number: self.number,
            size: self.offset,
            smallest,
            largest,
            entries: self.entries,
        })
    }

    /// Abandons the table, removing its file.
    pub(crate) fn abandon(self) {
        let p = self.path.clone();
        drop(self);
        let _ = std::fs::remove_file(p);
    }
}

/// The trailer stored after a block: the compression kind, then the crc32 of the stored bytes
/// followed by that kind byte.
pub(crate) fn block_trailer(stored: &[u8], kind: u8) -> [u8; TRAILER] {
    let mut h = crc32fast::Hasher::new();
    h.update(stored);
    h.update(&[kind]);
    let crc = h.finalize().to_le_bytes();
    [kind, crc[0], crc[1], crc[2], crc[3]]
}

/// The footer pointing at the filter, index and meta blocks, given as (offset, stored length)
/// pairs: the six handles, the format version, the crc32 of those 52 bytes, the magic.
pub(crate) fn encode_footer(handles: [u64; 6]) -> Vec<u8> {
    let mut footer = Vec::with_capacity(FOOTER);
    for v in handles {
        footer.extend_from_slice(&v.to_le_bytes());
    }
    footer.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    let crc = crc32fast::hash(&footer);
    footer.extend_from_slice(&crc.to_le_bytes());
    footer.extend_from_slice(&MAGIC.to_le_bytes());
    footer
}

struct IndexEntry {
    /// Range of the block's last key in `Index::keys`.
    key_at: u32,
    key_len: u32,
    offset: u64,
    len: u64,
}

/// The decoded index, keys packed in one buffer so a binary search touches few cache lines.
struct Index {
    entries: Vec<IndexEntry>,
    keys: Vec<u8>,
}

impl Index {
    fn last_key(&self, i: usize) -> &[u8] {
        let e = &self.entries[i];
        &self.keys[e.key_at as usize..(e.key_at + e.key_len) as usize]
    }

    /// First block whose last key is >= `key` (== len when none).
    fn find(&self, key: &[u8]) -> usize {
        let (mut lo, mut hi) = (0, self.entries.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.last_key(mid) < key {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    fn len(&self) -> usize {
        self.entries.len()
    }
}

impl std::ops::Index<usize> for Index {
    type Output = IndexEntry;
    fn index(&self, i: usize) -> &IndexEntry {
        &self.entries[i]
    }
}

/// An open table. Dropping the last handle of a table marked obsolete deletes its file, so
/// readers still holding an old version keep the file alive.
pub(crate) struct Table {
    pub(crate) meta: TableMeta,
    path: PathBuf,
    file: File,
    index: Index,
    filter: Vec<u8>,
    obsolete: AtomicBool,
}

impl Drop for Table {
    fn drop(&mut self) {
        if self.obsolete.load(Ordering::Acquire) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The bytes a stored block at `off` takes (`len` plus trailer), checked against the file.
fn block_span(path: &Path, off: u64, len: u64, file_size: u64) -> Result<usize> {
    off.checked_add(len)
        .and_then(|x| x.checked_add(TRAILER as u64))
        .filter(|&e| e <= file_size)
        .map(|e| (e - off) as usize)
        .ok_or_else(|| Error::corruption(path, off, "block handle points past the end of the file"))
}

/// Reads a stored block at `off` (`len` bytes plus trailer), checks and decodes it.
fn read_block(file: &File, path: &Path, off: u64, len: u64, file_size: u64) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; block_span(path, off, len, file_size)?];
    file.read_exact_at(&mut buf, off)
        .map_err(|e| Error::io(path, e))?;
    decode_block(buf, path, off, len)
}

/// [`read_block`] only when the OS has the whole block in memory (its page cache), so the
/// read cannot wait for the disk: `Ok(None)` otherwise, also where the kernel or the file
/// system cannot tell (`preadv2` with `RWF_NOWAIT`).
fn read_block_in_memory(
    file: &File,
    path: &Path,
    off: u64,
    len: u64,
    file_size: u64,
) -> Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; block_span(path, off, len, file_size)?];
    if !pread_nowait(file, &mut buf, off) {
        return Ok(None);
    }
    decode_block(buf, path, off, len).map(Some)
}

/// Fills `buf` from `off` if that needs no disk I/O; false when it would (or on any error:
/// the caller then reads the way that may wait, which reports errors).
#[cfg(target_os = "linux")]
fn pread_nowait(file: &File, buf: &mut [u8], off: u64) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(off) = libc::off_t::try_from(off) else {
        return false;
    };
    let iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: one iovec describing `buf`, which outlives the call; the descriptor is open.
    let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, off, libc::RWF_NOWAIT) };
    // A short read means part of the block is not in memory.
    usize::try_from(n) == Ok(buf.len())
}

#[cfg(not(target_os = "linux"))]
fn pread_nowait(_file: &File, _buf: &mut [u8], _off: u64) -> bool {
    false
}

/// Checks a stored block read whole into `buf` (at `off`, `len` bytes plus trailer) and
/// decodes it.
fn decode_block(mut buf: Vec<u8>, path: &Path, off: u64, len: u64) -> Result<Vec<u8>> {
    let n = len as usize;
    let kind = buf[n];
    let crc = get_u32(&buf, n + 1).unwrap_or(0);
    let mut h = crc32fast::Hasher::new();
    h.update(&buf[..n + 1]);
    if h.finalize() != crc {
        return Err(Error::corruption(path, off, "block checksum mismatch"));
    }
    match kind {
        RAW => {
            buf.truncate(n);
            Ok(buf)
        }
        LZ4 => {
            // The size prefix is checked before it sizes an allocation: a damaged (or forged)
            // block must not make a reader allocate gigabytes.
            let size = get_u32(&buf[..n], 0)
                .ok_or_else(|| Error::corruption(path, off, "lz4 block shorter than its size"))?;
            let most = (n as u64 - 4).saturating_mul(LZ4_MAX_EXPANSION);
            if u64::from(size) > most {
                return Err(Error::corruption(
                    path,
                    off,
                    format!(
                        "lz4 block claims {size} bytes, more than its {} stored bytes can expand to",
                        n - 4
                    ),
                ));
            }
            lz4_flex::block::decompress_size_prepended(&buf[..n]).map_err(|e| {
                Error::corruption(path, off, format!("lz4 block does not decode: {e}"))
            })
        }
        k => Err(Error::corruption(
            path,
            off,
            format!("unknown block compression {k}"),
        )),
    }
}

impl Table {
    /// Opens table file `number`, checking footer, index, filter and meta. `expected` is what
    /// the manifest says about it, if anything.
    pub(crate) fn open(dir: &Path, number: u64, expected_size: Option<u64>) -> Result<Table> {
        let path = table_path(dir, number);
        let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        let size = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        if let Some(exp) = expected_size {
            if exp != size {
                return Err(Error::corruption(
                    &path,
                    size,
                    format!("table is {size} bytes, the manifest says {exp}"),
                ));
            }
        }
        if size < FOOTER as u64 {
            return Err(Error::corruption(
                &path,
                0,
                "file shorter than a table footer",
            ));
        }
        let foot_at = size - FOOTER as u64;
        let mut f = [0u8; FOOTER];
        file.read_exact_at(&mut f, foot_at)
            .map_err(|e| Error::io(&path, e))?;
        let bad = |what: &str| Error::corruption(&path, foot_at, what.to_string());
        if get_u64(&f, 56) != Some(MAGIC) {
            return Err(bad("bad table magic"));
        }
        if get_u32(&f, 52) != Some(crc32fast::hash(&f[..52])) {
            return Err(bad("footer checksum mismatch"));
        }
        if get_u32(&f, 48) != Some(FORMAT_VERSION) {
            return Err(bad("unsupported table format version"));
        }
        let h = |i: usize| get_u64(&f, i * 8).unwrap_or(u64::MAX);
        let filter = read_block(&file, &path, h(0), h(1), size)?;
        let index_raw = read_block(&file, &path, h(2), h(3), size)?;
        let meta_raw = read_block(&file, &path, h(4), h(5), size)?;
        let mbad = |what: &str| Error::corruption(&path, h(4), what.to_string());
        let mut p = 0;
        let smallest = get_bytes(&meta_raw, &mut p)
            .ok_or_else(|| mbad("meta block"))?
            .to_vec();
        let largest = get_bytes(&meta_raw, &mut p)
            .ok_or_else(|| mbad("meta block"))?
            .to_vec();
        let entries = get_varint(&meta_raw, &mut p).ok_or_else(|| mbad("meta block"))?;
        let ibad = |what: &str| Error::corruption(&path, h(2), format!("index block: {what}"));
        let index_block = Arc::new(Block::new(index_raw).map_err(ibad)?);
        let mut it = index_block.iter();
        let mut index = Index {
            entries: Vec::new(),
            keys: Vec::new(),
        };
        while it.advance().map_err(ibad)? {
            let v = it.value().ok_or_else(|| ibad("entry without handle"))?;
            let mut q = 0;
            let offset = get_varint(v, &mut q).ok_or_else(|| ibad("handle"))?;
            let len = get_varint(v, &mut q).ok_or_else(|| ibad("handle"))?;
            let key_at = u32::try_from(index.keys.len()).map_err(|_| ibad("index too large"))?;
            index.keys.extend_from_slice(it.key());
            index.entries.push(IndexEntry {
                key_at,
                key_len: it.key().len() as u32,
                offset,
                len,
            });
        }
        Ok(Table {
            meta: TableMeta {
                number,
                size,
                smallest,
                largest,
                entries,
            },
            path,
            file,
            index,
            filter,
            obsolete: AtomicBool::new(false),
        })
    }

    /// Marks the file for deletion when the last handle is dropped.
    pub(crate) fn mark_obsolete(&self) {
        self.obsolete.store(true, Ordering::Release);
    }

    /// Whether `key` lies within the table's key range.
    pub(crate) fn covers(&self, key: &[u8]) -> bool {
        key >= self.meta.smallest.as_slice() && key <= self.meta.largest.as_slice()
    }

    /// Bloom check: false means the key is certainly absent.
    pub(crate) fn may_contain(&self, hash: u64) -> bool {
        self.filter.is_empty() || bloom::may_contain(&self.filter, hash)
    }

    /// Data block `i` for a scan: from the cache when it is there, else read from the file
    /// without caching it. Scans are bulk reads (the Merkle rebuild after every ring change,
    /// anti-entropy, streaming to other nodes, export) that would evict the blocks point
    /// reads keep using, as RocksDB's `fill_cache = false` avoids.
    fn block(&self, i: usize, cache: Option<&BlockCache>) -> Result<Arc<Block>> {
        let e = &self.index[i];
        if let Some(b) = cache.and_then(|c| c.get(self.meta.number, e.offset)) {
            return Ok(b);
        }
        self.load_block(i, None)
    }

    /// Reads data block `i` from the file (and caches it when a cache is given).
    fn load_block(&self, i: usize, cache: Option<&BlockCache>) -> Result<Arc<Block>> {
        let e = &self.index[i];
        let raw = read_block(&self.file, &self.path, e.offset, e.len, self.meta.size)?;
        self.cached(i, raw, cache)
    }

    /// [`Table::load_block`] only when the OS has the block in memory: `Ok(None)` when
    /// reading it could wait for the disk.
    fn load_block_in_memory(&self, i: usize, cache: &BlockCache) -> Result<Option<Arc<Block>>> {
        let e = &self.index[i];
        let Some(raw) =
            read_block_in_memory(&self.file, &self.path, e.offset, e.len, self.meta.size)?
        else {
            return Ok(None);
        };
        let block = self.cached(i, raw, Some(cache))?;
        cache.page_cache_reads.fetch_add(1, Ordering::Relaxed);
        Ok(Some(block))
    }

    /// Parses block `i`'s contents, putting the block into `cache` when given.
    fn cached(&self, i: usize, raw: Vec<u8>, cache: Option<&BlockCache>) -> Result<Arc<Block>> {
        let off = self.index[i].offset;
        let b = Arc::new(Block::new(raw).map_err(|w| Error::corruption(&self.path, off, w))?);
        if let Some(c) = cache {
            c.insert(self.meta.number, off, b.clone());
        }
        Ok(b)
    }

    /// Point lookup (the caller has checked range and filter). `Ok(None)` only when
    /// `cache_only` and the block is not in the cache.
    pub(crate) fn get(
        &self,
        key: &[u8],
        cache: Option<&BlockCache>,
        cache_only: bool,
    ) -> Result<Option<Lookup>> {
        let i = self.index.find(key);
        if i == self.index.len() {
            return Ok(Some(Lookup::Absent));
        }
        let cached = cache.and_then(|c| c.get(self.meta.number, self.index[i].offset));
        let block = match (cached, cache) {
            (Some(b), _) => b,
            (None, Some(c)) if cache_only => match self.load_block_in_memory(i, c)? {
                Some(b) => b,
                None => return Ok(None),
            },
            (None, None) if cache_only => return Ok(None),
            (None, _) => self.load_block(i, cache)?,
        };
        let off = self.index[i].offset;
        let mut it = block.iter();
        let found = it
            .seek(key)
            .map_err(|w| Error::corruption(&self.path, off, w))?;
        if !found || it.key() != key {
            return Ok(Some(Lookup::Absent));
        }
        Ok(Some(match it.value() {
            Some(v) => Lookup::Found(v.to_vec()),
            None => Lookup::Deleted,
        }))
    }
}

/// An entry borrowed from a block: key and value (`None` = tombstone).
pub(crate) type BorrowedEntry<'a> = (&'a [u8], Option<&'a [u8]>);

/// Walks a table's entries in key order from a start key.
pub(crate) struct TableIter {
    table: Arc<Table>,
    cache: Option<Arc<BlockCache>>,
    /// Index of the block `cur` came from; the next block to load is `block + 1`.
    block: usize,
    cur: Option<BlockIter>,
    /// The first call to `next_entry` yields the already positioned entry.
    pending: bool,
}

impl TableIter {
    /// Positions at the first key >= `start` (or the first key when `None`).
    pub(crate) fn new(
        table: Arc<Table>,
        cache: Option<Arc<BlockCache>>,
        start: Option<&[u8]>,
    ) -> Result<TableIter> {
        let block = match start {
            Some(s) => table.index.find(s),
            None => 0,
        };
        let mut it = TableIter {
            table,
            cache,
            block,
            cur: None,
            pending: false,
        };
        if block < it.table.index.len() {
            let b = it.table.block(block, it.cache.as_deref())?;
            let off = it.table.index[block].offset;
            let mut bi = b.iter();
            let found = match start {
                Some(s) => bi.seek(s),
                None => bi.advance(),
            }
            .map_err(|w| Error::corruption(&it.table.path, off, w))?;
            if found {
                it.cur = Some(bi);
                it.pending = true;
            } else {
                // Only possible for a malformed index; move on to the next block.
                it.block += 1;
            }
        }
        Ok(it)
    }

    /// Advances and returns the current entry as borrowed slices, `None` at the end.
    pub(crate) fn next_entry(&mut self) -> Result<Option<BorrowedEntry<'_>>> {
        if self.pending {
            self.pending = false;
        } else {
            loop {
                if let Some(bi) = self.cur.as_mut() {
                    let off = self.table.index[self.block].offset;
                    if bi
                        .advance()
                        .map_err(|w| Error::corruption(&self.table.path, off, w))?
                    {
                        break;
                    }
                    self.block += 1;
                } else if self.block >= self.table.index.len() {
                    return Ok(None);
                }
                if self.block >= self.table.index.len() {
                    self.cur = None;
                    return Ok(None);
                }
                let b = self.table.block(self.block, self.cache.as_deref())?;
                let off = self.table.index[self.block].offset;
                let mut bi = b.iter();
                let has = bi
                    .advance()
                    .map_err(|w| Error::corruption(&self.table.path, off, w))?;
                self.cur = Some(bi);
                if has {
                    break;
                }
            }
        }
        Ok(self.cur.as_ref().map(|bi| (bi.key(), bi.value())))
    }

    /// Like `next_entry`, copying the entry.
    pub(crate) fn next_owned(&mut self) -> Result<Option<(Vec<u8>, Entry)>> {
        Ok(self
            .next_entry()?
            .map(|(k, v)| (k.to_vec(), v.map(|v| v.to_vec()))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lz4_expansion_bound_holds_for_the_most_compressible_blocks() {
        for size in [
            0usize,
            1,
            15,
            16,
            19,
            20,
            300,
            4096,
            65_536,
            1 << 20,
            3 << 20,
        ] {
            for fill in [0u8, 0xab] {
                let c = lz4_flex::block::compress_prepend_size(&vec![fill; size]);
                let most = (c.len() as u64 - 4) * LZ4_MAX_EXPANSION;
                assert!(
                    size as u64 <= most,
                    "{size} bytes stored in {}",
                    c.len() - 4
                );
            }
        }
    }

    #[test]
    fn lz4_block_claiming_more_than_it_can_hold_is_refused_before_decoding() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("000001.sst");
        let mut stored = u32::MAX.to_le_bytes().to_vec();
        stored.extend_from_slice(&[0x1f, 0, 0, 0]);
        let mut file = stored.clone();
        file.extend_from_slice(&block_trailer(&stored, LZ4));
        std::fs::write(&path, &file).unwrap();
        let f = File::open(&path).unwrap();
        let n = stored.len() as u64;
        match read_block(&f, &path, 0, n, file.len() as u64) {
            Err(Error::Corruption { offset, what, .. }) => {
                assert_eq!(offset, 0);
                assert!(what.contains("claims 4294967295 bytes"), "{what}");
            }
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("a forged lz4 block decoded"),
        }
    }
}

//! The commit log: numbered segment files of framed records, each record one write batch.
//!
//! Frame: `len: u32 LE` | `crc32(payload): u32 LE` | `payload` (a [`WriteBatch`] encoding).
//!
//! Laws kept here:
//! - A record is acknowledged only after its frame has been written whole (and, in
//!   `SyncMode::Always`, fsynced together with the segment's directory entry).
//! - Replay never applies a frame that is incomplete, fails its checksum or does not decode,
//!   so garbage is never replayed as data. At such a frame it looks for a whole, valid
//!   record further on: if there is none, the rest is a torn tail (the unfinished last write
//!   of a crash) and replay stops there; if there is one, the log is damaged in the middle,
//!   and replay either stops there and says so (the engine then refuses to open) or, when
//!   asked to, skips the damaged bytes and goes on from that record.
//! - A segment may end in zeros (the mapped writer grows the file a step ahead of its
//!   appends, the unmapped one writes zeros ahead of them): an all-zero tail is the clean end
//!   of the segment, not a torn record.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::Arc;

use crate::batch::WriteBatch;
use crate::coding::get_u32;
use crate::error::{Error, Result};

#[cfg(test)]
thread_local! {
    /// Makes `SegmentWriter::sync` fail on this thread (tests of fsync-failure handling).
    pub(crate) static FAIL_SYNC: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Makes `SegmentWriter::create` on this thread write with system calls instead of a
    /// mapping (tests of the fallback path).
    pub(crate) static NO_MAP: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Makes unmapped appends on this thread write half their bytes, then fail with ENOSPC.
    pub(crate) static FAIL_WRITE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Bytes of a frame header.
pub(crate) const FRAME_HEADER: usize = 8;

/// How far ahead of the appends a mapped segment's file size grows, and how much written
/// data is handed back from the process to the page cache at a time.
const MAP_STEP: u64 = 1 << 20;

/// How far ahead of its appends an unmapped segment writes zeros (see `SegmentWriter::zero`).
const ZERO_STEP: usize = 64 << 10;

/// What is written ahead of the appends of an unmapped segment.
static ZEROS: [u8; ZERO_STEP] = [0; ZERO_STEP];

/// Name of segment `number` inside the data directory.
pub(crate) fn segment_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:06}.log"))
}

/// Appends one framed record for `batch` to `out`.
pub(crate) fn frame_batch(batch: &WriteBatch, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_HEADER]);
    batch.encode_into(out);
    let payload_len = out.len() - start - FRAME_HEADER;
    let crc = crc32fast::hash(&out[start + FRAME_HEADER..]);
    out[start..start + 4].copy_from_slice(&(payload_len as u32).to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// The segment currently written to.
pub(crate) struct SegmentWriter {
    /// Shared so the interval syncer can fsync without taking the writer.
    pub(crate) file: Arc<File>,
    pub(crate) path: PathBuf,
    /// Bytes written so far.
    pub(crate) len: u64,
    /// The segment's reserved blocks mapped into memory, when the file system allows it.
    map: Option<Mapping>,
    /// Where groups are framed before their append, kept for its allocation.
    scratch: Vec<u8>,
    /// Whether appends write zeros ahead of themselves (see [`SegmentWriter::zero`]).
    zero_ahead: bool,
    /// The end of the zeros written ahead of the appends (at most the file's size).
    zeroed: u64,
}

impl SegmentWriter {
    /// Creates segment `number`, reserves `preallocate` bytes of disk for it, and makes its
    /// directory entry durable. With `map`, appends are copies into the mapped reserve where
    /// the file system allows it; without (every group is fsynced), appends write zeros ahead
    /// of themselves where the file system overwrites in place.
    pub(crate) fn create(
        dir: &Path,
        number: u64,
        preallocate: u64,
        map: bool,
    ) -> Result<SegmentWriter> {
        let path = segment_path(dir, number);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        // Reserving the blocks up front (the file size stays 0, so replay never sees the
        // reserved space) means an append does not allocate blocks, and its fdatasync does
        // not have to commit block-allocation metadata: about twice as fast on ext4. A file
        // system without fallocate just grows the file as it goes.
        let reserve = preallocate.min(isize::MAX as u64 / 2);
        // SAFETY: fallocate on a file descriptor we own; no memory is passed.
        let reserved = unsafe {
            libc::fallocate(
                file.as_raw_fd(),
                libc::FALLOC_FL_KEEP_SIZE,
                0,
                reserve as libc::off_t,
            )
        } == 0;
        if !reserved && reserve > 0 {
            // A reservation that ran out of space may keep what it got (ext4 does): blocks
            // past the end that nothing would use, taken from the writes that still fit.
            // Truncating to the (zero) size hands them back.
            file.set_len(0).map_err(|e| Error::io(&path, e))?;
        }
        if let Err(e) = crate::fsutil::sync_dir(dir) {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        #[cfg(test)]
        let reserved = reserved && !NO_MAP.with(std::cell::Cell::get);
        // Appending by copying into the mapped reserve saves a write(2) per group (the
        // biggest system-call cost of a write left after group commit). Only where the
        // blocks are reserved and the file system cannot fail a write fault for lack of
        // space, which would kill the process with SIGBUS instead of failing one write.
        let zero_ahead = !map && overwrites_in_place(&file);
        let map = if map && reserved && reserve > 0 && overwrites_in_place(&file) {
            Mapping::new(&file, reserve)
        } else {
            None
        };
        Ok(SegmentWriter {
            file: Arc::new(file),
            path,
            len: 0,
            map,
            scratch: Vec::new(),
            zero_ahead,
            zeroed: 0,
        })
    }

    /// Frames `batches` (one record each) and appends them together; gives the bytes
    /// appended.
    pub(crate) fn append_batches(&mut self, batches: &[WriteBatch]) -> Result<usize> {
        let mut frames = std::mem::take(&mut self.scratch);
        frames.clear();
        frames.reserve(batches.iter().map(|b| b.bytes + 16 + b.len() * 4).sum());
        for b in batches {
            frame_batch(b, &mut frames);
        }
        let res = self.append(&frames);
        let n = frames.len();
        // Not the buffer of a rare huge group: that memory goes back.
        if frames.capacity() <= 1 << 20 {
            self.scratch = frames;
        }
        res.map(|()| n)
    }

    /// Appends already framed records: a copy into the mapped segment, or one system call.
    pub(crate) fn append(&mut self, frames: &[u8]) -> Result<()> {
        let end = self.len + frames.len() as u64;
        match &mut self.map {
            Some(m) if end <= m.cap => {
                if end > m.size {
                    // Grow the file a step at a time ahead of the writes: touching a mapped
                    // page past the end of the file would be a SIGBUS.
                    let size = end.next_multiple_of(MAP_STEP).min(m.cap);
                    self.file
                        .set_len(size)
                        .map_err(|e| Error::io(&self.path, e))?;
                    m.size = size;
                }
                m.write_at(self.len, frames);
            }
            // Past the reserve (a group bigger than what is left) or not mapped.
            _ => {
                if let Err(e) = self.write_at_end(frames) {
                    // Part of the group may be in the file (a full disk fails a write midway).
                    // Cut it off, so the next group follows the last whole record: a torn
                    // record before later acknowledged ones would read as damage, and records
                    // of this group past the tear could be replayed though never acknowledged.
                    // Only then may the engine go on after the failure.
                    self.zeroed = 0;
                    let keep = match &mut self.map {
                        // A mapped segment's file runs ahead of the appends (zeros, which
                        // replay reads as the end): zero what the failed write left in that
                        // stretch and keep the size, or a later copy into it would fault.
                        Some(m) => {
                            if m.size > self.len {
                                m.write_at(self.len, &vec![0; (m.size - self.len) as usize]);
                            }
                            m.size.max(self.len)
                        }
                        None => self.len,
                    };
                    return match self.file.set_len(keep) {
                        Ok(()) => Err(Error::io(&self.path, e)),
                        Err(cut) => Err(Error::io(
                            &self.path,
                            std::io::Error::other(format!(
                                "append failed ({e}), and cutting off its partial bytes too \
                                 ({cut})"
                            )),
                        )),
                    };
                }
            }
        }
        self.len = end;
        if self.zero_ahead {
            self.zero();
        }
        Ok(())
    }

    /// Keeps written zeros ahead of the appends: at least `ZERO_STEP` bytes past the end,
    /// written a step at a time. An append then lands on blocks that are already allocated
    /// and written, inside the file's size, so its fdatasync has no metadata to commit (no
    /// new size, no reserved block to mark written): measured on ext4 here, 95 µs per
    /// fdatasync of a 3 KB append instead of 142 µs, for one extra write of zeros per 64 KiB
    /// of log (PostgreSQL zero-fills its WAL segments for the same reason). The zeros read
    /// as the segment's clean end. Best effort: a failure (a full disk past the reserve)
    /// leaves the appends as they were, and the next append tries again.
    fn zero(&mut self) {
        let from = self.zeroed.max(self.len);
        if from >= self.len + ZERO_STEP as u64 {
            return;
        }
        if self.file.write_all_at(&ZEROS, from).is_ok() {
            self.zeroed = from + ZERO_STEP as u64;
        }
    }

    fn write_at_end(&self, frames: &[u8]) -> std::io::Result<()> {
        #[cfg(test)]
        let fail = FAIL_WRITE.with(std::cell::Cell::get);
        #[cfg(all(not(test), feature = "fault-injection"))]
        let fail = false;
        #[cfg(any(test, feature = "fault-injection"))]
        if fail || crate::testing::appends_fail(&self.path) {
            // A full disk: half the group lands, then the write fails.
            self.file
                .write_all_at(&frames[..frames.len() / 2], self.len)?;
            return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
        }
        self.file.write_all_at(frames, self.len)
    }

    /// Makes everything appended so far durable. For the mapped segment too: the pages
    /// written through the mapping are the file's page cache, which fdatasync writes back.
    pub(crate) fn sync(&self) -> Result<()> {
        #[cfg(test)]
        if FAIL_SYNC.with(std::cell::Cell::get) {
            return Err(Error::io(
                &self.path,
                std::io::Error::other("injected fsync failure"),
            ));
        }
        self.file.sync_data().map_err(|e| Error::io(&self.path, e))
    }

    /// Whether appends go through a memory mapping.
    #[cfg(test)]
    pub(crate) fn mapped(&self) -> bool {
        self.map.is_some()
    }
}

/// Whether `file`'s file system overwrites written or reserved blocks in place (ext4, XFS)
/// or keeps pages in memory (tmpfs). Then a write fault on a mapping of reserved blocks
/// cannot fail, and zeros written ahead of the appends spare their fdatasyncs metadata work.
/// Copy-on-write file systems allocate at write-back (and may fail a fault with SIGBUS).
fn overwrites_in_place(file: &File) -> bool {
    // SAFETY: fstatfs fills the zeroed struct we pass; the descriptor is ours.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) } != 0 {
        return false;
    }
    [
        libc::EXT4_SUPER_MAGIC,
        libc::XFS_SUPER_MAGIC,
        libc::TMPFS_MAGIC,
    ]
    .contains(&st.f_type)
}

/// A segment's reserve mapped shared and writable.
struct Mapping {
    ptr: NonNull<u8>,
    /// Bytes mapped: the reserve.
    cap: u64,
    /// The file's size; the mapped bytes below it may be written.
    size: u64,
    /// Written data below this offset has been handed back to the page cache: the process
    /// does not keep a whole segment resident.
    released: u64,
}

// SAFETY: the mapping is owned by one SegmentWriter, used under the engine's commit-log lock;
// nothing else holds the pointer.
unsafe impl Send for Mapping {}

impl Mapping {
    fn new(file: &File, cap: u64) -> Option<Mapping> {
        // SAFETY: a fresh shared mapping of our own descriptor; the kernel picks the address.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                cap as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return None;
        }
        Some(Mapping {
            ptr: NonNull::new(p.cast())?,
            cap,
            size: 0,
            released: 0,
        })
    }

    /// Copies `bytes` to `offset`; `offset + bytes.len()` must be at most `size`.
    fn write_at(&mut self, offset: u64, bytes: &[u8]) {
        let end = offset + bytes.len() as u64;
        assert!(end <= self.size && self.size <= self.cap);
        // SAFETY: [offset, end) lies inside the mapping and below the file's size, so every
        // page exists; only this writer touches the mapping, and `bytes` is not part of it.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.ptr.as_ptr().add(offset as usize),
                bytes.len(),
            );
        }
        let whole = end / MAP_STEP * MAP_STEP;
        if whole > self.released {
            // Dirty pages stay in the page cache (and are written back and fsynced as
            // usual); only this process's mapping of them goes. A failure costs memory only.
            // SAFETY: the range is page-aligned, inside the mapping and never written again.
            unsafe {
                libc::madvise(
                    self.ptr.as_ptr().add(self.released as usize).cast(),
                    (whole - self.released) as usize,
                    libc::MADV_DONTNEED,
                );
            }
            self.released = whole;
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping was made by `Mapping::new` with this length and is unmapped once.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.cap as usize);
        }
    }
}

/// What replaying one segment found.
#[derive(Debug, Default)]
pub(crate) struct SegmentReplay {
    /// Records applied.
    pub(crate) records: u64,
    /// Where replay stopped before the end, and why, if it did.
    pub(crate) cut: Option<(u64, String)>,
    /// When replay stopped at damage with a whole record after it: that record's offset.
    pub(crate) valid_after: Option<u64>,
    /// Damaged stretches skipped (only when asked to skip): offset, length, why.
    pub(crate) skipped: Vec<(u64, u64, String)>,
}

/// Replays the records of a segment in order, calling `apply` for each decoded batch; with
/// `skip_damaged`, damage followed by whole records is skipped instead of stopping replay.
pub(crate) fn replay_segment(
    path: &Path,
    skip_damaged: bool,
    apply: impl FnMut(WriteBatch),
) -> Result<SegmentReplay> {
    let data = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    Ok(replay_bytes(&data, skip_damaged, apply))
}

/// The whole, valid record at `pos` (its end and batch), or why there is none. An all-zero
/// rest is reported as `Ok(None)`: the clean end of a mapped segment.
fn record_at(
    data: &[u8],
    pos: usize,
) -> std::result::Result<Option<(usize, WriteBatch)>, &'static str> {
    if data[pos..].iter().all(|&b| b == 0) {
        return Ok(None);
    }
    let (Some(len), Some(crc)) = (get_u32(data, pos), get_u32(data, pos + 4)) else {
        return Err("truncated record header");
    };
    let start = pos + FRAME_HEADER;
    let Some(payload) = data.get(start..start + len as usize) else {
        return Err("record extends past the end of the segment");
    };
    if len == 0 || crc32fast::hash(payload) != crc {
        return Err("record checksum mismatch");
    }
    let Some(batch) = WriteBatch::decode(payload) else {
        return Err("record payload does not decode");
    };
    Ok(Some((start + len as usize, batch)))
}

/// The offset of the first whole, valid record that starts after `bad`, if any. Every offset
/// is tried (the damaged frame's own length may be what is wrong); a candidate costs a
/// checksum only when its length fits in what is left, and this runs only after damage.
fn next_valid_record(data: &[u8], bad: usize) -> Option<usize> {
    (bad + 1..data.len().saturating_sub(FRAME_HEADER)).find(|&p| {
        let fits = get_u32(data, p)
            .is_some_and(|len| len > 0 && len as usize <= data.len() - p - FRAME_HEADER);
        fits && matches!(record_at(data, p), Ok(Some(_)))
    })
}

/// Replays the records held in `data` (a whole segment's contents). At a frame that is
/// incomplete, fails its checksum or does not decode, replay stops (a torn tail when no whole
/// record follows; damage, with `valid_after` set, when one does), unless `skip_damaged` and
/// a whole record follows, which it then goes on from. Never panics, whatever the bytes.
pub(crate) fn replay_bytes(
    data: &[u8],
    skip_damaged: bool,
    mut apply: impl FnMut(WriteBatch),
) -> SegmentReplay {
    let mut out = SegmentReplay::default();
    let mut pos = 0usize;
    while pos < data.len() {
        match record_at(data, pos) {
            Ok(None) => break, // the unwritten rest of a mapped segment
            Ok(Some((end, batch))) => {
                apply(batch);
                out.records += 1;
                pos = end;
            }
            Err(why) => match next_valid_record(data, pos) {
                Some(next) if skip_damaged => {
                    out.skipped
                        .push((pos as u64, (next - pos) as u64, why.to_string()));
                    pos = next;
                }
                next => {
                    out.cut = Some((pos as u64, why.to_string()));
                    out.valid_after = next.map(|n| n as u64);
                    break;
                }
            },
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(i: u32) -> WriteBatch {
        let mut b = WriteBatch::new();
        b.put(format!("k{i}"), vec![i as u8; (i as usize) * 3]);
        b
    }

    #[test]
    fn replay_reads_whole_records_and_cuts_any_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let mut frames = Vec::new();
        let mut ends = Vec::new();
        for i in 0..20 {
            frame_batch(&batch(i), &mut frames);
            ends.push(frames.len());
        }
        let path = dir.path().join("x.log");
        for cut in 0..=frames.len() {
            std::fs::write(&path, &frames[..cut]).unwrap();
            let mut got = Vec::new();
            let r = replay_segment(&path, false, |b| got.push(b)).unwrap();
            let whole = ends.iter().filter(|&&e| e <= cut).count();
            assert_eq!(got.len(), whole);
            assert_eq!(r.records as usize, whole);
            for (i, b) in got.iter().enumerate() {
                assert_eq!(*b, batch(i as u32));
            }
            let at_boundary = cut == 0 || ends.contains(&cut);
            assert_eq!(r.cut.is_none(), at_boundary, "cut at {cut}");
        }
    }

    /// Writes `n` records through a fresh segment writer in appends of a few records each;
    /// gives the writer and the frames written.
    fn write_segment(dir: &Path, reserve: u64, n: u32) -> (SegmentWriter, Vec<u8>) {
        write_segment_with(dir, reserve, n, true)
    }

    fn write_segment_with(dir: &Path, reserve: u64, n: u32, map: bool) -> (SegmentWriter, Vec<u8>) {
        let mut w = SegmentWriter::create(dir, 1, reserve, map).unwrap();
        let mut all = Vec::new();
        let mut i = 0;
        while i < n {
            let mut frames = Vec::new();
            for _ in 0..(i % 7 + 1).min(n - i) {
                frame_batch(&batch(i), &mut frames);
                i += 1;
            }
            w.append(&frames).unwrap();
            all.extend_from_slice(&frames);
        }
        w.sync().unwrap();
        (w, all)
    }

    /// The segment at `path` (contents `on_disk`) is the `n` records `frames`, then zeros,
    /// and replays as exactly those records with no cut.
    fn assert_records_then_zeros(path: &Path, on_disk: &[u8], frames: &[u8], n: u32) {
        assert_eq!(&on_disk[..frames.len()], frames);
        assert!(on_disk[frames.len()..].iter().all(|&b| b == 0));
        let (got, r) = replay_all(path);
        assert_eq!(got.len(), n as usize);
        assert!(r.cut.is_none(), "{:?}", r.cut);
        for (i, b) in got.iter().enumerate() {
            assert_eq!(*b, batch(i as u32));
        }
    }

    fn replay_all(path: &Path) -> (Vec<WriteBatch>, SegmentReplay) {
        let mut got = Vec::new();
        let r = replay_segment(path, false, |b| got.push(b)).unwrap();
        (got, r)
    }

    #[test]
    fn an_append_that_fails_midway_is_cut_off_and_the_next_one_takes_its_place() {
        // Unmapped, past a small mapped reserve, and writing zeros ahead (not asked to map):
        // the ways an append makes system calls.
        for (reserve, map) in [(0u64, true), (4 << 10, true), (1 << 20, false)] {
            let dir = tempfile::tempdir().unwrap();
            NO_MAP.with(|f| f.set(reserve == 0));
            let mut w = SegmentWriter::create(dir.path(), 1, reserve, map).unwrap();
            NO_MAP.with(|f| f.set(false));
            let acked: Vec<WriteBatch> = (1..=12).map(batch).collect();
            w.append_batches(&acked).unwrap();
            // A group of many records, half of it written when the disk fills: whole records
            // of it are in the file at that moment.
            let torn: Vec<WriteBatch> = (100..140).map(batch).collect();
            FAIL_WRITE.with(|f| f.set(true));
            let err = w.append_batches(&torn).unwrap_err();
            FAIL_WRITE.with(|f| f.set(false));
            assert!(err.is_no_space(), "{err}");
            // A shorter group next: without the cut, records of the failed group would follow
            // it whole, never acknowledged, after a tear.
            let next = [batch(2)];
            w.append_batches(&next).unwrap();
            w.sync().unwrap();
            let (got, r) = replay_all(&w.path);
            assert!(r.cut.is_none(), "reserve {reserve}: {:?}", r.cut);
            let want: Vec<WriteBatch> = acked.iter().chain(&next).cloned().collect();
            assert_eq!(got, want, "reserve {reserve}");
        }
    }

    #[test]
    fn a_mapped_segment_ends_in_zeros_that_replay_as_its_clean_end() {
        let dir = tempfile::tempdir().unwrap();
        let (w, frames) = write_segment(dir.path(), 8 << 20, 400);
        // The test directory is on ext4 or tmpfs here; elsewhere the writer may not map.
        if !w.mapped() {
            eprintln!("segment not mapped on this file system; mapped path not exercised");
            return;
        }
        let on_disk = std::fs::read(&w.path).unwrap();
        assert_eq!(on_disk.len() as u64 % MAP_STEP, 0, "size grows in steps");
        assert_records_then_zeros(&w.path, &on_disk, &frames, 400);
    }

    #[test]
    fn appends_past_the_mapped_reserve_go_on_with_system_calls() {
        let dir = tempfile::tempdir().unwrap();
        // A 64 KiB reserve and about 500 KiB of records: most of them land past the mapping.
        let (w, frames) = write_segment(dir.path(), 64 << 10, 1000);
        assert!(frames.len() > 64 << 10);
        assert_eq!(w.len as usize, frames.len());
        let on_disk = std::fs::read(&w.path).unwrap();
        assert_eq!(
            on_disk, frames,
            "no gap and no zeros between the mapped and written parts"
        );
        let (got, r) = replay_all(&w.path);
        assert_eq!(got.len(), 1000);
        assert!(r.cut.is_none());
    }

    #[test]
    fn a_segment_fsynced_per_group_keeps_zeros_ahead_of_its_appends() {
        let dir = tempfile::tempdir().unwrap();
        // About 500 KiB of records, in appends of one to seven.
        let (w, frames) = write_segment_with(dir.path(), 1 << 20, 1000, false);
        assert!(!w.mapped());
        let on_disk = std::fs::read(&w.path).unwrap();
        assert_eq!(&on_disk[..frames.len()], &frames[..]);
        if !w.zero_ahead {
            assert_eq!(on_disk.len(), frames.len());
            eprintln!("copy-on-write file system: no zeros ahead, not exercised");
            return;
        }
        let ahead = on_disk.len() - frames.len();
        assert!(
            (ZERO_STEP..2 * ZERO_STEP).contains(&ahead),
            "{ahead} bytes ahead of the appends"
        );
        assert_records_then_zeros(&w.path, &on_disk, &frames, 1000);
    }

    #[test]
    fn an_unmapped_segment_is_exactly_its_records() {
        let dir = tempfile::tempdir().unwrap();
        NO_MAP.with(|c| c.set(true));
        let (w, frames) = write_segment(dir.path(), 8 << 20, 300);
        NO_MAP.with(|c| c.set(false));
        assert!(!w.mapped());
        assert_eq!(std::fs::read(&w.path).unwrap(), frames);
        let (got, r) = replay_all(&w.path);
        assert_eq!(got.len(), 300);
        assert!(r.cut.is_none());
    }

    #[test]
    fn zeros_with_data_after_them_are_damage_not_an_end() {
        let dir = tempfile::tempdir().unwrap();
        let mut data = Vec::new();
        for i in 0..5 {
            frame_batch(&batch(i), &mut data);
        }
        let end = data.len();
        data.resize(end + 4096, 0);
        let path = dir.path().join("x.log");
        std::fs::write(&path, &data).unwrap();
        let (got, r) = replay_all(&path);
        assert_eq!(
            (got.len(), r.cut.is_none()),
            (5, true),
            "all-zero tail: clean end"
        );
        // A page written back after a lost one: zeros, then a record. That is damage, not a
        // torn tail: the record after the hole is found and named.
        let after = data.len();
        frame_batch(&batch(9), &mut data);
        std::fs::write(&path, &data).unwrap();
        let (got, r) = replay_all(&path);
        assert_eq!(got.len(), 5, "nothing after the hole is applied");
        assert_eq!(r.cut.expect("the hole is reported").0 as usize, end);
        assert_eq!(r.valid_after, Some(after as u64));
        // Asked to skip damage, replay goes on from that record.
        let mut got = Vec::new();
        let r = replay_segment(&path, true, |b| got.push(b)).unwrap();
        assert_eq!(got.len(), 6);
        assert_eq!(got[5], batch(9));
        assert_eq!(
            r.skipped,
            vec![(end as u64, 4096, "record checksum mismatch".into())]
        );
        assert!(r.cut.is_none());
    }

    #[test]
    fn replay_stops_at_a_flipped_bit() {
        let dir = tempfile::tempdir().unwrap();
        let mut frames = Vec::new();
        let mut ends = vec![0];
        for i in 0..10 {
            frame_batch(&batch(i), &mut frames);
            ends.push(frames.len());
        }
        let path = dir.path().join("x.log");
        for byte in 0..frames.len() {
            let mut f = frames.clone();
            f[byte] ^= 0x10;
            std::fs::write(&path, &f).unwrap();
            let mut got = Vec::new();
            let r = replay_segment(&path, false, |b| got.push(b)).unwrap();
            // The record containing the flipped byte and everything after it is never applied.
            let rec = ends.iter().filter(|&&e| e <= byte).count() - 1;
            assert!(
                got.len() <= rec,
                "byte {byte}: applied {} > {rec}",
                got.len()
            );
            for (i, b) in got.iter().enumerate() {
                assert_eq!(*b, batch(i as u32));
            }
            let (off, _) = r.cut.expect("corruption reported");
            assert_eq!(off as usize, ends[got.len()]);
            // Damage in the last record is a torn tail; anywhere else the next whole record
            // is found, and skipping replays every record but the damaged one.
            if rec + 1 == ends.len() - 1 {
                assert_eq!(r.valid_after, None, "byte {byte}");
            } else {
                assert_eq!(r.valid_after, Some(ends[rec + 1] as u64), "byte {byte}");
            }
            let mut skipped = Vec::new();
            let s = replay_segment(&path, true, |b| skipped.push(b)).unwrap();
            let expect: Vec<WriteBatch> = (0..10).filter(|&i| i != rec as u32).map(batch).collect();
            if rec + 1 == ends.len() - 1 {
                assert_eq!(skipped, expect, "byte {byte}: torn last record cut");
                assert!(s.cut.is_some() && s.skipped.is_empty());
            } else {
                assert_eq!(skipped, expect, "byte {byte}: all but the damaged record");
                assert_eq!(s.skipped.len(), 1, "byte {byte}");
                assert_eq!(s.skipped[0].0 as usize, ends[rec], "byte {byte}");
                assert!(s.cut.is_none(), "byte {byte}");
            }
        }
    }
}

//! The engine: write path (group commit), read path, flush, compaction threads, recovery.
//!
//! Write path: a writer queues its batch; the first writer to find no leader becomes leader,
//! takes every queued batch, writes them to the commit log in one system call, fsyncs once
//! (`SyncMode::Always`), applies them to the memtable in queue order and wakes the others.
//! Async writers ([`Engine::submit`]) queue the same way but never lead a group that needs an
//! fsync or a new segment: the commit thread does, and completes their [`Ticket`]s.
//! Laws:
//! - A write is acknowledged only after its record is in the commit log (and fsynced under
//!   `Always`); a failed commit-log write or fsync poisons the engine, and no later write is
//!   acknowledged. Except a full disk: an append that fails for lack of space is cut back off
//!   the segment and refuses only its own group ([`Error::NoSpace`]); a flush or compaction
//!   that fails for lack of space removes its outputs and is retried every second. Writes
//!   that would wait on a flush that cannot run are refused at once. Nothing is lost, reads go
//!   on, and writes resume once space is freed, with no restart.
//! - Commit-log order equals memtable apply order (one leader at a time, under the `wal` lock).
//! - The memtable of segment N holds exactly the writes of segment N (rotation happens under
//!   the `wal` lock, between groups).
//! - A segment is deleted only after a durable manifest names tables holding all its writes.
//! - Table files are fsynced, then the directory, then the manifest naming them is written.

use std::collections::{HashSet, VecDeque};
use std::fs::File;
use std::future::Future;
use std::ops::Bound;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::batch::WriteBatch;
use crate::bloom;
use crate::cache::BlockCache;
use crate::commit_log::{self, SegmentWriter};
use crate::compaction::{self, Job};
use crate::error::{Error, Result};
use crate::iter::{LevelIter, MergeIter, Scan, Source};
use crate::manifest::{ManifestData, MANIFEST};
use crate::memtable::{Lookup, Memtable};
use crate::options::{Options, SyncMode};
use crate::sstable::{BuildOptions, Table, TableBuilder, TableIter};
use crate::stats::{self, Counters, Stats};
use crate::version::Version;

/// Largest batch (sum of key and value bytes) accepted in one record.
const MAX_BATCH_BYTES: usize = 1 << 30;

/// Where replay found a torn or corrupt commit-log tail, and cut it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    /// The segment file.
    pub file: PathBuf,
    /// Offset of the first byte not replayed.
    pub offset: u64,
    /// What was wrong there.
    pub reason: String,
}

/// A damaged stretch of a commit-log segment that opening skipped
/// ([`crate::LogRecovery::SkipDamaged`]); the records around it were replayed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkippedDamage {
    /// The segment file.
    pub file: PathBuf,
    /// Offset of the first byte skipped.
    pub offset: u64,
    /// Bytes skipped (up to the next whole record).
    pub bytes: u64,
    /// What was wrong there.
    pub reason: String,
}

/// What [`Engine::checkpoint`] wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checkpoint {
    /// Tables hard-linked into the checkpoint.
    pub tables_linked: usize,
    /// Tables copied (linking failed).
    pub tables_copied: usize,
    /// Bytes of the tables.
    pub bytes: u64,
}

/// What `Engine::open` found and did; the daemon logs it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Commit-log segments replayed, in order.
    pub segments_replayed: Vec<PathBuf>,
    /// Records (batches) replayed into the memtable.
    pub records_replayed: u64,
    /// A torn tail cut from the last segment (garbage with no whole record after it).
    pub torn_tail: Option<TornTail>,
    /// Damaged stretches skipped, records after them replayed (only with
    /// [`crate::LogRecovery::SkipDamaged`]; without it such damage refuses the open).
    pub skipped_damage: Vec<SkippedDamage>,
    /// Files removed because no manifest referenced them (leftovers of a crash).
    pub files_removed: Vec<PathBuf>,
    /// Tables opened from the manifest.
    pub tables_opened: usize,
    /// Whether the data directory was new.
    pub created: bool,
}

impl std::fmt::Display for RecoveryReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} tables, {} records replayed from {} commit-log segments, {} leftover files removed",
            self.tables_opened,
            self.records_replayed,
            self.segments_replayed.len(),
            self.files_removed.len()
        )?;
        if let Some(t) = &self.torn_tail {
            write!(
                f,
                "; torn commit-log tail cut at {}:{} ({})",
                t.file.display(),
                t.offset,
                t.reason
            )?;
        }
        for d in &self.skipped_damage {
            write!(
                f,
                "; damaged commit-log records skipped at {}:{} ({} bytes, {})",
                d.file.display(),
                d.offset,
                d.bytes,
                d.reason
            )?;
        }
        Ok(())
    }
}

/// What readers see: the memtables and the live tables. Readers load it without a lock
/// (`Inner::state`); an edit builds the next one (`Inner::edit_state`).
#[derive(Clone)]
struct State {
    mem: Arc<Memtable>,
    /// Immutable memtables, newest first.
    imm: Arc<Vec<Arc<Memtable>>>,
    version: Arc<Version>,
}

/// The group-commit queue.
/// The commit log being written, and what its writers have counted.
struct Wal {
    seg: SegmentWriter,
    counts: WriteCounts,
}

/// The write statistics each group adds to, under the commit-log lock that the group's
/// leader holds anyway. As atomics of their own, four locked increments per group pulled
/// their cache line from the core of the last leader.
#[derive(Default)]
struct WriteCounts {
    writes: u64,
    groups: u64,
    user_bytes: u64,
    wal_bytes: u64,
}

impl std::ops::Deref for Wal {
    type Target = SegmentWriter;
    fn deref(&self) -> &SegmentWriter {
        &self.seg
    }
}

impl std::ops::DerefMut for Wal {
    fn deref_mut(&mut self) -> &mut SegmentWriter {
        &mut self.seg
    }
}

struct Commit {
    queue: Vec<WriteBatch>,
    /// An emptied queue kept for its allocation: the leader swaps it in for the queue it
    /// takes, and gives the taken one back empty.
    spare: Vec<WriteBatch>,
    /// Ticket of `queue[0]`.
    first_ticket: u64,
    next_ticket: u64,
    /// Every ticket below this has been handled.
    done_upto: u64,
    leader: bool,
    /// Tickets from here on failed (the engine is poisoned).
    failed_from: Option<u64>,
    /// Groups refused for lack of disk space whose blocking writers have not all looked yet.
    refused: Vec<Refused>,
    /// Blocking writers waiting for their group, in ticket order: (ticket, thread to
    /// unpark). A leader wakes exactly the writers its group completed, and, when it hands
    /// over, the first one left (to lead the next group); waking them all through a condvar
    /// made every waiter of the next group wake and sleep again once per group, which with 32
    /// writers cost more CPU than the commits.
    waiters: Vec<(u64, std::thread::Thread)>,
    /// Blocking writers whose group is complete, still to be woken: the leader wakes two,
    /// and each writer woken wakes two more, so the futex calls are spread over the writers
    /// instead of standing between one group and the next on the leader's thread.
    to_wake: VecDeque<std::thread::Thread>,
    /// Async submissions not yet committed, in ticket order.
    pending: VecDeque<Pending>,
    /// The commit thread waits on `committer_cv` for async submissions.
    committer_idle: bool,
    /// The commit thread is to exit once nothing is pending.
    committer_exit: bool,
}

/// A group of tickets `start..end` refused for lack of space: `waiting` blocking writers of
/// it are yet to take their error.
struct Refused {
    start: u64,
    end: u64,
    why: String,
    waiting: usize,
}

/// An async submission waiting for its group.
struct Pending {
    ticket: u64,
    slot: Arc<Slot>,
    /// Called once the batch is in the memtable (true) or failed (false): see
    /// [`Engine::submit_with`].
    settle: Box<dyn FnOnce(bool) + Send>,
}

/// Where the result of an async submission is left for its [`Ticket`].
#[derive(Default)]
struct Slot(Mutex<SlotState>);

#[derive(Default)]
struct SlotState {
    result: Option<Result<()>>,
    waker: Option<Waker>,
}

impl Slot {
    fn complete(&self, result: Result<()>) {
        let waker = {
            let mut st = lock(&self.0);
            st.result = Some(result);
            st.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// The outcome of a write handed to [`Engine::submit`]: resolves once the batch is durable
/// per `SyncMode` and visible to reads, or failed. Dropping it does not cancel the write.
pub struct Ticket {
    slot: Option<Arc<Slot>>,
    ready: Option<Result<()>>,
}

impl Future for Ticket {
    type Output = Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let this = self.get_mut();
        if let Some(r) = this.ready.take() {
            return Poll::Ready(r);
        }
        let Some(slot) = &this.slot else {
            return Poll::Ready(Err(Error::InvalidArgument(
                "ticket polled after it resolved".into(),
            )));
        };
        let mut st = lock(&slot.0);
        if let Some(r) = st.result.take() {
            drop(st);
            this.slot = None;
            return Poll::Ready(r);
        }
        match &st.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => st.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

/// The error each write of a failed group gets (the engine's error type is not `Clone`).
fn group_error(e: &Error) -> Error {
    match e {
        Error::Closed => Error::Closed,
        Error::Poisoned(why) => Error::Poisoned(why.clone()),
        Error::NoSpace(why) => Error::NoSpace(why.clone()),
        other => Error::Poisoned(format!("commit-log write failed: {other}")),
    }
}

/// Serializes version edits and manifest writes.
struct EditState {
    log_number: u64,
    /// Round-robin compaction pointers per level.
    pointers: Vec<Vec<u8>>,
}

struct Bg {
    shutdown: bool,
}

/// What a full disk holds up: background work (the error of its last attempt, cleared when
/// it next succeeds) and the commit log.
#[derive(Default)]
struct NoSpaceState {
    flush: Option<String>,
    compaction: Option<String>,
    /// The last commit-log write the full disk refused, until a write gets through or the
    /// file system has the room that write needed.
    log: Option<LogRefusal>,
}

impl NoSpaceState {
    /// Why background work is held up, if it is.
    fn background(&self) -> Option<String> {
        self.flush.clone().or_else(|| self.compaction.clone())
    }
}

/// A commit-log write (an append, or the new segment it needed) refused for lack of space.
struct LogRefusal {
    why: String,
    /// Free bytes the write needed: the group's, and [`LOG_REFUSAL_MARGIN`].
    needed: u64,
}

/// Free space beyond a refused group's own bytes before the disk counts as no longer full for
/// the commit log: room for the writes that follow it.
const LOG_REFUSAL_MARGIN: u64 = 1 << 20;

/// Committed bytes after which free space is looked up again for the reserve.
const RESERVE_CHECK_BYTES: u64 = 1 << 20;
/// Time after which a commit looks free space up again for the reserve.
const RESERVE_CHECK_EVERY: Duration = Duration::from_secs(1);

/// Groups between two reads of the clock for the reserve (a clock read per group showed in
/// profiles).
const RESERVE_CLOCK_GROUPS: u64 = 64;

/// When free space was last looked up for the reserve, and what was committed since.
struct ReserveWatch {
    at: Instant,
    bytes: u64,
    groups: u64,
}

/// Which background work a [`NoSpaceState`] entry is about.
#[derive(Clone, Copy)]
enum Background {
    Flush,
    Compaction,
}

struct Inner {
    dir: PathBuf,
    opts: Options,
    build: BuildOptions,
    cache: Arc<BlockCache>,
    /// Loaded by every read and write: an `ArcSwap` loads it without touching a lock or a
    /// reference count other threads share (an `RwLock` read and three `Arc` clones did, on
    /// each get: cache lines bouncing between the cores serving requests).
    state: ArcSwap<State>,
    /// Serializes edits of `state` (a memtable rotated, a flush or compaction installed).
    state_edit: Mutex<()>,
    commit: Mutex<Commit>,
    /// Wakes the commit thread (async submissions waiting for a leader).
    committer_cv: Condvar,
    wal: Mutex<Wal>,
    /// Set when the commit log has unsynced bytes (interval mode).
    wal_dirty: AtomicBool,
    edit: Mutex<EditState>,
    next_file: AtomicU64,
    flush_lock: Mutex<()>,
    compaction_lock: Mutex<()>,
    poison: Mutex<Option<String>>,
    poisoned: AtomicBool,
    /// Background work failing for lack of disk space, retried every second, and a refused
    /// commit-log write.
    no_space: Mutex<NoSpaceState>,
    /// Whether `no_space.log` is set: a group that gets through clears it without the lock.
    log_refused: AtomicBool,
    /// Free space kept back for flushes and compactions (`Options::reserve_bytes` resolved
    /// against the file system at open); 0: none.
    reserve: u64,
    /// Set while the file system has less free than `reserve` (cleared once it has
    /// `reserve` and [`LOG_REFUSAL_MARGIN`]): writes that do not free space are refused.
    below_reserve: AtomicBool,
    /// Free bytes at the last look-up that found the file system below the reserve.
    reserve_free: AtomicU64,
    reserve_watch: Mutex<ReserveWatch>,
    closed: AtomicBool,
    bg: Mutex<Bg>,
    /// Wakes the background threads and writers stalled on them.
    bg_cv: Condvar,
    counters: Counters,
    /// Held for the engine's lifetime: an exclusive lock on `LOCK` in the directory (and the
    /// handle free space is looked up through).
    lock_file: File,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data behind our mutexes stays consistent across a panicking holder (each critical
    // section either completes its edit or leaves the previous value), so poisoning is ignored.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The storage engine. `Send + Sync`: share it as `Arc<Engine>`.
pub struct Engine {
    inner: Arc<Inner>,
    threads: Vec<JoinHandle<()>>,
    committer: Option<JoinHandle<()>>,
    report: RecoveryReport,
}

/// Parses `NNNNNN.ext` names.
fn file_number(name: &str, ext: &str) -> Option<u64> {
    name.strip_suffix(ext)?.parse().ok()
}

fn list_dir(dir: &Path) -> Result<Vec<String>> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut names = Vec::new();
    for e in rd {
        let e = e.map_err(|e| Error::io(dir, e))?;
        if let Some(n) = e.file_name().to_str() {
            names.push(n.to_string());
        }
    }
    Ok(names)
}

fn lock_dir(dir: &Path) -> Result<File> {
    let path = dir.join("LOCK");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(Error::InvalidDir {
            dir: dir.to_path_buf(),
            why: format!(
                "another process holds {} ({})",
                path.display(),
                std::io::Error::last_os_error()
            ),
        });
    }
    Ok(f)
}

impl Engine {
    /// Opens (or creates) the engine in `dir`: replays the commit log, flushes what it
    /// replayed, removes files no manifest references, and starts the background threads.
    ///
    /// Errors: `Corruption` for a damaged manifest, table, or commit-log segment other than a
    /// torn tail of the newest one; `InvalidDir` for data files without a manifest or a
    /// directory locked by another process; `Io` for failed system calls. It never starts empty
    /// over existing data.
    pub fn open(dir: impl AsRef<Path>, opts: Options) -> Result<Engine> {
        let dir = dir.as_ref().to_path_buf();
        if opts.num_levels < 2 {
            return Err(Error::InvalidArgument(
                "num_levels must be at least 2".into(),
            ));
        }
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let lock_file = lock_dir(&dir)?;
        let reserve = match opts.reserve_bytes {
            Some(bytes) => bytes,
            None => fs_size(&lock_file).map_or(0, crate::options::default_reserve),
        };
        let mut report = RecoveryReport::default();
        // A leftover temporary manifest is a write that never took effect.
        for n in list_dir(&dir)? {
            if n.ends_with(".tmp") {
                let p = dir.join(&n);
                std::fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
                report.files_removed.push(p);
            }
        }
        let names = list_dir(&dir)?;
        let manifest = match ManifestData::load(&dir)? {
            Some(m) => m,
            None => {
                if let Some(n) = names
                    .iter()
                    .find(|n| n.ends_with(".sst") || n.ends_with(".log"))
                {
                    return Err(Error::InvalidDir {
                        dir: dir.clone(),
                        why: format!("it holds data file {n} but no {MANIFEST}"),
                    });
                }
                report.created = true;
                let m = ManifestData {
                    next_file: 1,
                    log_number: 0,
                    tables: Vec::new(),
                };
                m.store(&dir)?;
                m
            }
        };

        // Open every live table; any failure is fatal (never start without data we had).
        let mut version = Version::empty(opts.num_levels);
        let mut live = HashSet::new();
        for (level, meta) in &manifest.tables {
            if *level >= opts.num_levels {
                return Err(Error::corruption(
                    dir.join(MANIFEST),
                    0,
                    format!("table {} at level {level} beyond num_levels", meta.number),
                ));
            }
            let t = Table::open(&dir, meta.number, Some(meta.size))?;
            live.insert(meta.number);
            version.levels[*level].push(Arc::new(t));
        }
        let version = version.with_edit(&HashSet::new(), Vec::new());
        version
            .check()
            .map_err(|w| Error::corruption(dir.join(MANIFEST), 0, w))?;
        report.tables_opened = live.len();

        let mut max_seen = manifest.next_file;
        let mut segments = Vec::new();
        for n in &names {
            if let Some(num) = file_number(n, ".sst").or_else(|| file_number(n, ".log")) {
                max_seen = max_seen.max(num + 1);
            }
            if let Some(num) = file_number(n, ".log") {
                if num >= manifest.log_number {
                    segments.push(num);
                }
            }
        }
        segments.sort_unstable();

        // Replay: only the newest segment may end in a torn tail, and no segment may be
        // damaged in the middle (whole records after a bad one) unless told to skip damage.
        let skip = opts.log_recovery == crate::LogRecovery::SkipDamaged;
        let replayed = Arc::new(Memtable::new(segments.last().copied().unwrap_or(0)));
        for (i, &num) in segments.iter().enumerate() {
            let path = commit_log::segment_path(&dir, num);
            let r = commit_log::replay_segment(&path, skip, |b| replayed.apply_owned(b))?;
            report.records_replayed += r.records;
            report.segments_replayed.push(path.clone());
            report
                .skipped_damage
                .extend(
                    r.skipped
                        .into_iter()
                        .map(|(offset, bytes, reason)| SkippedDamage {
                            file: path.clone(),
                            offset,
                            bytes,
                            reason,
                        }),
                );
            if let Some((offset, reason)) = r.cut {
                if let Some(next) = r.valid_after {
                    return Err(Error::corruption(
                        &path,
                        offset,
                        format!(
                            "{reason}, with whole records after it (the next at offset \
                             {next}): the commit log is damaged, not torn, and cutting it \
                             there would drop the acknowledged writes after it; open with \
                             skip-damaged commit-log recovery to replay the records around \
                             the damage"
                        ),
                    ));
                }
                if i + 1 < segments.len() {
                    if !skip {
                        return Err(Error::corruption(
                            &path,
                            offset,
                            format!("{reason} in a commit-log segment that is not the newest"),
                        ));
                    }
                    let len = std::fs::metadata(&path)
                        .map_err(|e| Error::io(&path, e))?
                        .len();
                    report.skipped_damage.push(SkippedDamage {
                        file: path,
                        offset,
                        bytes: len.saturating_sub(offset),
                        reason,
                    });
                    continue;
                }
                report.torn_tail = Some(TornTail {
                    file: path,
                    offset,
                    reason,
                });
            }
        }

        let next_file = AtomicU64::new(max_seen);
        let seg_no = next_file.fetch_add(1, Ordering::SeqCst);
        let wal = SegmentWriter::create(&dir, seg_no, segment_reserve(&opts), maps_log(&opts))?;
        let imm = if replayed.is_empty() {
            Vec::new()
        } else {
            vec![replayed]
        };
        let build = BuildOptions {
            block_bytes: opts.block_bytes.max(256),
            restart_interval: opts.block_restart_interval.max(1),
            compression: opts.compression,
            bloom_bits_per_key: opts.bloom_bits_per_key,
        };
        let inner = Arc::new(Inner {
            dir: dir.clone(),
            build,
            cache: Arc::new(BlockCache::new(opts.block_cache_bytes)),
            state: ArcSwap::from_pointee(State {
                mem: Arc::new(Memtable::new(seg_no)),
                imm: Arc::new(imm),
                version: Arc::new(version),
            }),
            state_edit: Mutex::new(()),
            commit: Mutex::new(Commit {
                queue: Vec::new(),
                spare: Vec::new(),
                first_ticket: 0,
                next_ticket: 0,
                done_upto: 0,
                leader: false,
                failed_from: None,
                refused: Vec::new(),
                waiters: Vec::new(),
                to_wake: VecDeque::new(),
                pending: VecDeque::new(),
                committer_idle: false,
                committer_exit: false,
            }),
            committer_cv: Condvar::new(),
            wal: Mutex::new(Wal {
                seg: wal,
                counts: WriteCounts::default(),
            }),
            wal_dirty: AtomicBool::new(false),
            edit: Mutex::new(EditState {
                log_number: manifest.log_number,
                pointers: vec![Vec::new(); opts.num_levels],
            }),
            next_file,
            flush_lock: Mutex::new(()),
            compaction_lock: Mutex::new(()),
            poison: Mutex::new(None),
            poisoned: AtomicBool::new(false),
            no_space: Mutex::new(NoSpaceState::default()),
            log_refused: AtomicBool::new(false),
            reserve,
            below_reserve: AtomicBool::new(false),
            reserve_free: AtomicU64::new(0),
            reserve_watch: Mutex::new(ReserveWatch {
                at: Instant::now(),
                bytes: 0,
                groups: 0,
            }),
            closed: AtomicBool::new(false),
            bg: Mutex::new(Bg { shutdown: false }),
            bg_cv: Condvar::new(),
            counters: Counters::default(),
            opts,
            lock_file,
        });

        // Persist the replayed writes as a table (or just move the log number forward), so
        // the old segments can go.
        if !inner.flush_oldest_imm()? {
            inner.install(&HashSet::new(), Vec::new(), Some(seg_no))?;
        }
        inner.remove_old_segments()?;
        for n in &names {
            if file_number(n, ".sst").is_some_and(|num| !live.contains(&num)) {
                let p = dir.join(n);
                std::fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
                report.files_removed.push(p);
            }
        }
        for n in &names {
            if let Some(num) = file_number(n, ".log") {
                if num < manifest.log_number {
                    report.files_removed.push(dir.join(n));
                }
            }
        }

        let mut threads = Vec::new();
        if inner.opts.background_work {
            let nice = inner.opts.background_nice;
            let i = inner.clone();
            threads.push(spawn("kvd-storage-flush", move || {
                lower_priority(nice);
                i.flush_loop()
            })?);
            let i = inner.clone();
            threads.push(spawn("kvd-storage-compact", move || {
                lower_priority(nice);
                i.compaction_loop()
            })?);
        }
        if inner.opts.sync == SyncMode::Interval {
            let i = inner.clone();
            threads.push(spawn("kvd-storage-sync", move || i.sync_loop())?);
        }
        // A disk already below the reserve refuses the first write.
        inner.check_reserve();
        let i = inner.clone();
        let committer = Some(spawn("kvd-storage-commit", move || i.commit_loop())?);
        Ok(Engine {
            inner,
            threads,
            committer,
            report,
        })
    }

    /// What recovery found when this engine was opened.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.report
    }

    /// The directory the engine lives in.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Applies a batch atomically; returns once it is durable per `SyncMode`.
    ///
    /// Errors: `TooLarge` for an oversized key, value or batch; `Poisoned` once a durability
    /// step has failed; `Closed` after close; `Io` for the commit-log failure that poisoned it.
    pub fn write(&self, batch: WriteBatch) -> Result<()> {
        self.inner.write(batch)
    }

    /// Queues a batch without waiting for it: the [`Ticket`] resolves once it is durable per
    /// `SyncMode` (what [`Engine::write`] returns after). For async callers: this never waits
    /// for the disk. When the write is a buffered append and nobody else is committing, it is
    /// committed here and the ticket is ready; otherwise the commit thread commits it with
    /// whatever else is queued, one fsync for the group. Writes are applied in submission
    /// order, across `write` and `submit`.
    ///
    /// `hold` is kept until the batch is in the memtable (or failed), even when the ticket is
    /// dropped: a caller doing a read-modify-write passes its lock guards, so the next writer
    /// of the key reads this write. Unlike `write`, this does not stall for flushing and
    /// compaction; callers check [`Engine::write_would_stall`] first.
    ///
    /// Errors (before anything is queued): those of `write` for a bad batch, a poisoned or a
    /// closed engine.
    pub fn submit<H: Send + 'static>(&self, batch: WriteBatch, hold: H) -> Result<Ticket> {
        self.inner.submit(batch, move |_| drop(hold))
    }

    /// [`Engine::submit`] telling the caller how the batch settled, even when the ticket is
    /// dropped: `settle` is called exactly once, with true once the batch is in the memtable,
    /// with false when it was refused (a full disk refuses a group and the engine goes on) or
    /// failed, also when `submit_with` itself returns an error. A caller that updated
    /// something ahead of the write (an index) takes it back there, under the locks it
    /// moved into `settle`.
    pub fn submit_with<F: FnOnce(bool) + Send + 'static>(
        &self,
        batch: WriteBatch,
        settle: F,
    ) -> Result<Ticket> {
        self.inner.submit(batch, settle)
    }

    /// True when a write now would wait for flushing and compaction to catch up: exactly the
    /// conditions under which [`Engine::write`] stops or slows down. A memtable waiting for
    /// its flush below the limit is not one: writes go on into the next memtable meanwhile,
    /// and once the limit is reached this says so for every later write.
    pub fn write_would_stall(&self) -> bool {
        let o = &self.inner.opts;
        let st = self.inner.state.load();
        let l0 = st.version.levels[0].len();
        st.imm.len() >= o.max_immutable_memtables.max(1)
            || l0 >= o.l0_stop_trigger
            || l0 >= o.l0_slowdown_trigger
    }

    /// Why writes are refused for lack of disk space, if they are: flushing or compaction is
    /// held up (retried every second; writes that would wait for it are refused meanwhile), or
    /// the commit log's last write was refused and the file system still has less free space
    /// than that write needed, or the file system has less free space than the reserve
    /// ([`Options::reserve_bytes`]). Free space is looked up now, so this clears once space
    /// is freed, with no write needed to find out.
    pub fn no_space(&self) -> Option<String> {
        self.inner.disk_full_reason()
    }

    /// Why the engine stopped taking writes for good, if it did: an I/O error that is not
    /// lack of space (a failed fsync, a disk error, a file system remounted read-only).
    /// Reads go on; writes are refused until the engine is opened again.
    pub fn failure(&self) -> Option<String> {
        if !self.inner.poisoned.load(Ordering::Acquire) {
            return None;
        }
        lock(&self.inner.poison).clone()
    }

    /// Writes refused so far because the disk was full (see [`Stats::no_space_refusals`]).
    pub fn no_space_refusals(&self) -> u64 {
        stats::get(&self.inner.counters.no_space_refusals)
    }

    /// Writes one key.
    pub fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        let mut b = WriteBatch::new();
        b.put(key, value);
        self.inner.write(b)
    }

    /// Erases one key.
    pub fn delete(&self, key: &[u8]) -> Result<()> {
        let mut b = WriteBatch::new();
        b.delete(key);
        self.inner.write(b)
    }

    /// The newest value of `key`. Errors: `Corruption` when a table block on the way fails its
    /// checks (never a damaged value), `Io`.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.inner.get(key, false).map(|found| found.flatten())
    }

    /// Like [`Engine::get`], but only from memory (memtables, filters, the block cache, and
    /// blocks the OS holds in its page cache, read without waiting: `preadv2` with
    /// `RWF_NOWAIT` on Linux): `Ok(None)` when the answer needs a read from disk. Lets an
    /// async caller answer the common case on its own thread and send only the rest to a
    /// blocking pool (RocksDB's `kBlockCacheTier` read tier, widened to the page cache).
    pub fn get_cached(&self, key: &[u8]) -> Result<Option<Option<Vec<u8>>>> {
        self.inner.get(key, true)
    }

    /// Keys in `[start, end)` (per the bounds) in order, from a consistent snapshot taken now.
    /// A scan uses blocks the block cache holds but does not add the ones it reads (a bulk
    /// read would evict what point reads use).
    pub fn scan(&self, start: Bound<&[u8]>, end: Bound<&[u8]>) -> Result<Scan> {
        self.inner.scan(start, end)
    }

    /// Turns the memtable into a table and waits until every memtable written so far is in
    /// tables.
    pub fn flush(&self) -> Result<()> {
        self.inner.flush()
    }

    /// Writes a consistent copy of the data to `dest`, a directory that must not exist yet,
    /// which [`Engine::open`] opens as it stood (a backup, as RocksDB's checkpoints and
    /// Cassandra's snapshots): flushes the memtable, then hard-links every live table into
    /// `dest` (copying it where linking fails, e.g. across file systems) and writes a manifest
    /// naming exactly them, so no commit log is needed. Tables are immutable, so a linked
    /// copy costs no space until compaction replaces the original. Writes made after the
    /// flush are not in it.
    ///
    /// Errors: `InvalidArgument` when `dest` exists; `Io` for failed system calls (a partly
    /// written `dest` is left for the caller to remove).
    pub fn checkpoint(&self, dest: &Path) -> Result<Checkpoint> {
        self.inner.checkpoint(dest)
    }

    /// Full manual compaction: flushes, then merges every table into the deepest level,
    /// dropping tombstones (and values `tombstone_purge` accepts). Waits for it.
    pub fn compact(&self) -> Result<()> {
        self.inner.compact_all()
    }

    /// [`Engine::compact`] on a thread of its own at the background threads' lower priority
    /// (`background_nice`), as automatic compaction runs, so requests take the CPU first;
    /// waits for it. For an operator's compaction of a serving node.
    pub fn compact_in_background(&self) -> Result<()> {
        let inner = self.inner.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        spawn("kvd-compact-all", move || {
            lower_priority(inner.opts.background_nice);
            let _ = tx.send(inner.compact_all());
        })?;
        rx.recv().unwrap_or_else(|_| {
            Err(Error::io(
                PathBuf::from("kvd-compact-all"),
                std::io::Error::other("the compaction thread panicked"),
            ))
        })
    }

    /// Runs background-style compactions until none is due (useful with
    /// `background_work = false`). Returns how many ran.
    pub fn compact_pending(&self) -> Result<usize> {
        let mut n = 0;
        while self.inner.compact_step()? {
            n += 1;
        }
        Ok(n)
    }

    /// A snapshot of the statistics.
    pub fn stats(&self) -> Stats {
        self.inner.stats()
    }

    /// Flushes the memtable (if `flush_on_close`), syncs the commit log and stops the
    /// background threads.
    pub fn close(mut self) -> Result<()> {
        let mut res = Ok(());
        if self.inner.opts.flush_on_close && !self.inner.poisoned.load(Ordering::Acquire) {
            res = self.inner.flush();
        }
        let r2 = self.shutdown();
        res.and(r2)
    }

    fn shutdown(&mut self) -> Result<()> {
        if let Some(t) = self.committer.take() {
            // Commit what was submitted before closing: a ticket never hangs.
            lock(&self.inner.commit).committer_exit = true;
            self.inner.committer_cv.notify_all();
            let _ = t.join();
        }
        self.inner.closed.store(true, Ordering::Release);
        {
            let mut bg = lock(&self.inner.bg);
            bg.shutdown = true;
        }
        self.inner.bg_cv.notify_all();
        self.inner.wake_all_writers();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        if self.inner.poisoned.load(Ordering::Acquire) {
            return Ok(());
        }
        let wal = lock(&self.inner.wal);
        wal.sync()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// How long background work that failed for lack of space waits before trying again.
const NO_SPACE_RETRY: Duration = Duration::from_secs(1);

/// Removes the table files `numbers` (outputs no version names), best effort.
fn remove_table_files(dir: &Path, numbers: impl IntoIterator<Item = u64>) {
    for n in numbers {
        let _ = std::fs::remove_file(crate::sstable::table_path(dir, n));
    }
}

/// Disk space reserved for a new commit-log segment: what one memtable's worth of records
/// takes, with some slack.
fn segment_reserve(opts: &Options) -> u64 {
    (opts.memtable_bytes as u64 + opts.memtable_bytes as u64 / 8 + (1 << 20)).min(1 << 30)
}

/// Free bytes of the file system holding `file`, as this process may use them (root may use
/// the blocks kept back for it); `None` if the file system does not say.
fn free_bytes(file: &File) -> Option<u64> {
    #[cfg(test)]
    if let Some(free) = tests::FAKE_FREE.with(|f| f.get()) {
        return Some(free);
    }
    let st = statvfs(file)?;
    // SAFETY: geteuid cannot fail and touches no memory.
    let blocks = if unsafe { libc::geteuid() } == 0 {
        st.f_bfree
    } else {
        st.f_bavail
    };
    Some(blocks.saturating_mul(st.f_frsize))
}

/// Size of the file system holding `file`; `None` if it does not say.
fn fs_size(file: &File) -> Option<u64> {
    let st = statvfs(file)?;
    Some(st.f_blocks.saturating_mul(st.f_frsize))
}

/// `fstatvfs` of the file system holding `file`.
fn statvfs(file: &File) -> Option<libc::statvfs> {
    // SAFETY: fstatvfs fills the zeroed struct it is given, for a descriptor `file` keeps open.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        (libc::fstatvfs(file.as_raw_fd(), &mut st) == 0).then_some(st)
    }
}

/// `bytes` in MiB, for messages.
fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

/// Whether commit-log segments are appended through a memory mapping. Not when every group
/// is fsynced: write-back then write-protects the pages, and the next group's first copy into
/// each takes a page fault that costs more than the write(2) it saves (measured: about 1.5x
/// the CPU per write with `--sync always`).
fn maps_log(opts: &Options) -> bool {
    opts.sync != SyncMode::Always
}

/// Raises the calling thread's nice value by `nice` (on Linux the nice value is per thread).
/// Best effort: a failure leaves the thread as it was.
fn lower_priority(nice: i32) {
    if nice <= 0 {
        return;
    }
    // SAFETY: plain system calls on the calling thread and its errno, no memory passed.
    unsafe {
        let tid = libc::gettid() as libc::id_t;
        // -1 is a valid nice value: errno tells an error apart.
        *libc::__errno_location() = 0;
        let now = libc::getpriority(libc::PRIO_PROCESS, tid);
        if now == -1 && *libc::__errno_location() != 0 {
            return;
        }
        libc::setpriority(libc::PRIO_PROCESS, tid, (now + nice).min(19));
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(f)
        .map_err(|e| Error::io(PathBuf::from(name), e))
}

impl Inner {
    fn check_writable(&self) -> Result<()> {
        if self.poisoned.load(Ordering::Acquire) {
            let why = lock(&self.poison).clone().unwrap_or_default();
            return Err(Error::Poisoned(why));
        }
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        Ok(())
    }

    fn poison(&self, why: String) {
        {
            let mut p = lock(&self.poison);
            if p.is_none() {
                *p = Some(why);
            }
        }
        self.poisoned.store(true, Ordering::Release);
        drop(lock(&self.bg));
        self.bg_cv.notify_all();
        self.wake_all_writers();
    }

    /// Wakes every blocking writer to look at the engine again (it closed or was poisoned).
    fn wake_all_writers(&self) {
        for (_, t) in &lock(&self.commit).waiters {
            t.unpark();
        }
    }

    fn snapshot(&self) -> (Arc<Memtable>, Arc<Vec<Arc<Memtable>>>, Arc<Version>) {
        let st = self.state.load();
        (st.mem.clone(), st.imm.clone(), st.version.clone())
    }

    /// Replaces the state with `f` of the current one; edits are serialized, readers see the
    /// old state or the new one whole.
    fn edit_state(&self, f: impl FnOnce(&State) -> State) {
        let _edit = lock(&self.state_edit);
        let next = f(&self.state.load());
        self.state.store(Arc::new(next));
    }

    /// Checks a batch against the limits (before anything is queued).
    fn check_batch(&self, batch: &WriteBatch) -> Result<()> {
        self.check_writable()?;
        // Looked up again for each write refused, so the first one after space is freed goes
        // through.
        if self.below_reserve.load(Ordering::Acquire)
            && !batch.frees_space()
            && self.check_reserve()
        {
            stats::add(&self.counters.no_space_refusals, 1);
            return Err(Error::NoSpace(self.reserve_reason()));
        }
        for op in &batch.ops {
            let (k, v) = match op {
                crate::WriteOp::Put(k, v) => (k, Some(v)),
                crate::WriteOp::Delete(k) => (k, None),
            };
            if k.len() > self.opts.max_key_bytes {
                return Err(Error::TooLarge {
                    what: "key",
                    len: k.len(),
                    max: self.opts.max_key_bytes,
                });
            }
            if let Some(v) = v {
                if v.len() > self.opts.max_value_bytes {
                    return Err(Error::TooLarge {
                        what: "value",
                        len: v.len(),
                        max: self.opts.max_value_bytes,
                    });
                }
            }
        }
        if batch.bytes > MAX_BATCH_BYTES {
            return Err(Error::TooLarge {
                what: "batch",
                len: batch.bytes,
                max: MAX_BATCH_BYTES,
            });
        }
        Ok(())
    }

    fn write(&self, batch: WriteBatch) -> Result<()> {
        self.check_batch(&batch)?;
        if batch.is_empty() {
            return Ok(());
        }
        self.maybe_stall()?;
        let mut c = lock(&self.commit);
        let ticket = c.next_ticket;
        c.next_ticket += 1;
        c.queue.push(batch);
        let mut listed = false;
        loop {
            // A leader that completes our group takes us off the list; it or a writer woken
            // before us wakes us.
            if ticket < c.done_upto {
                // Our turn to pass the wake-up on (see `Commit::to_wake`).
                let pass = if listed {
                    [c.to_wake.pop_front(), c.to_wake.pop_front()]
                } else {
                    [None, None]
                };
                let res = if c.failed_from.is_some_and(|f| ticket >= f) {
                    let why = lock(&self.poison).clone().unwrap_or_default();
                    Err(Error::Poisoned(why))
                } else if let Some(i) = c
                    .refused
                    .iter()
                    .position(|r| (r.start..r.end).contains(&ticket))
                {
                    let r = &mut c.refused[i];
                    let why = r.why.clone();
                    r.waiting -= 1;
                    if r.waiting == 0 {
                        c.refused.remove(i);
                    }
                    Err(Error::NoSpace(why))
                } else {
                    Ok(())
                };
                drop(c);
                for t in pass.into_iter().flatten() {
                    t.unpark();
                }
                return res;
            }
            if !c.leader {
                if listed {
                    c.waiters.retain(|(t, _)| *t != ticket);
                }
                break;
            }
            if !listed {
                // Tickets are handed out under this lock, so the list stays in ticket order.
                c.waiters.push((ticket, std::thread::current()));
                listed = true;
            }
            drop(c);
            // An unpark before this park is not lost (it leaves a token); a spurious return
            // only loops.
            std::thread::park();
            c = lock(&self.commit);
        }
        // Leader: take the whole queue (our batch included).
        self.lead(c)
    }

    /// Commits every queued batch as one group, as the leader; `c` must show no other leader.
    /// Completes the group's async tickets and wakes whoever waits for what is left. When more
    /// async submissions queued meanwhile and committing them is a buffered append, it leads
    /// their group too (a few rounds at most): cheaper than waking the commit thread for them.
    /// Returns the result of the first group (the one holding the caller's batch).
    fn lead<'a>(&'a self, mut c: MutexGuard<'a, Commit>) -> Result<()> {
        /// Groups one leader commits for others before handing over.
        const EXTRA_ROUNDS: usize = 4;
        let mut first: Option<Result<()>> = None;
        let mut round = 0;
        loop {
            let spare = std::mem::take(&mut c.spare);
            let mut batches = std::mem::replace(&mut c.queue, spare);
            let start = c.first_ticket;
            let end = c.next_ticket;
            c.first_ticket = end;
            c.leader = true;
            drop(c);
            let res = self.commit_group(&mut batches);
            batches.clear();
            c = lock(&self.commit);
            // Not the queue of a rare huge group: that allocation goes.
            if c.spare.capacity() < batches.capacity() && batches.capacity() <= 1024 {
                c.spare = batches;
            }
            c.done_upto = end;
            match &res {
                Err(Error::NoSpace(why)) => {
                    // The blocking writers of this group are all on the list (each put itself
                    // there before the queue was taken), the caller aside.
                    let waiting = c.waiters.iter().filter(|(t, _)| *t < end).count();
                    if waiting > 0 {
                        c.refused.push(Refused {
                            start,
                            end,
                            why: why.clone(),
                            waiting,
                        });
                    }
                }
                Err(_) if c.failed_from.is_none() => c.failed_from = Some(start),
                _ => {}
            }
            let again = res.is_ok()
                && round < EXTRA_ROUNDS
                && !c.pending.is_empty()
                && self.commits_inline();
            c.leader = again;
            // Blocking writers: those this group completed, and the first of the next group
            // when nobody goes on leading (it leads, or finds a newcomer leading, which then
            // completes it).
            let done_writers = c.waiters.partition_point(|(t, _)| *t < end);
            // At most three (the next group's first writer, and two of the writers this group
            // completed, each of whom wakes two more), so on the stack: a Vec was an
            // allocation per group.
            let mut wake: [Option<std::thread::Thread>; 3] = [None, None, None];
            if !again {
                wake[0] = c.waiters.get(done_writers).map(|(_, t)| t.clone());
            }
            let cm = &mut *c;
            cm.to_wake
                .extend(cm.waiters.drain(..done_writers).map(|(_, t)| t));
            wake[1] = c.to_wake.pop_front();
            wake[2] = c.to_wake.pop_front();
            let upto = c.pending.partition_point(|p| p.ticket < end);
            let done: Vec<Pending> = c.pending.drain(..upto).collect();
            // An exiting commit thread waits for the queue to empty: tell it when it did.
            let wake_committer =
                !again && c.committer_idle && (!c.pending.is_empty() || c.committer_exit);
            drop(c);
            for t in wake.into_iter().flatten() {
                t.unpark();
            }
            if wake_committer {
                self.committer_cv.notify_one();
            }
            for p in done {
                let r = match &res {
                    Ok(()) => Ok(()),
                    Err(e) => Err(group_error(e)),
                };
                let Pending { slot, settle, .. } = p;
                settle(r.is_ok());
                slot.complete(r);
            }
            let first = first.get_or_insert(res);
            if !again {
                return std::mem::replace(first, Ok(()));
            }
            round += 1;
            c = lock(&self.commit);
        }
    }

    fn submit<F: FnOnce(bool) + Send + 'static>(
        &self,
        batch: WriteBatch,
        settle: F,
    ) -> Result<Ticket> {
        if let Err(e) = self.check_batch(&batch) {
            settle(false);
            return Err(e);
        }
        if batch.is_empty() {
            settle(true);
            return Ok(Ticket {
                slot: None,
                ready: Some(Ok(())),
            });
        }
        let inline = self.commits_inline();
        let mut c = lock(&self.commit);
        let ticket = c.next_ticket;
        c.next_ticket += 1;
        c.queue.push(batch);
        if inline && !c.leader {
            let res = self.lead(c);
            settle(res.is_ok());
            return Ok(Ticket {
                slot: None,
                ready: Some(res),
            });
        }
        let slot = Arc::new(Slot::default());
        c.pending.push_back(Pending {
            ticket,
            slot: slot.clone(),
            settle: Box::new(settle),
        });
        let wake = !c.leader && c.committer_idle;
        drop(c);
        if wake {
            self.committer_cv.notify_one();
        }
        Ok(Ticket {
            slot: Some(slot),
            ready: None,
        })
    }

    /// Whether a group may be committed on the submitting thread: it is a buffered append, with
    /// no fsync and no new segment.
    fn commits_inline(&self) -> bool {
        self.opts.sync != SyncMode::Always && !self.rotation_due()
    }

    /// Whether the memtable is close enough to full that the next group may rotate it.
    fn rotation_due(&self) -> bool {
        /// Writes this close to a full memtable count as rotating.
        const ROTATE_MARGIN: usize = 64 * 1024;
        self.state.load().mem.approximate_bytes() + ROTATE_MARGIN >= self.opts.memtable_bytes
    }

    /// The commit thread: leads the groups of async submissions that nobody else leads.
    fn commit_loop(&self) {
        let mut c = lock(&self.commit);
        loop {
            if !c.leader && !c.pending.is_empty() {
                let _ = self.lead(c);
                c = lock(&self.commit);
            } else if c.committer_exit && c.pending.is_empty() {
                return;
            } else {
                c.committer_idle = true;
                c = self.committer_cv.wait(c).unwrap_or_else(|e| e.into_inner());
                c.committer_idle = false;
            }
        }
    }

    /// Writes one group to the commit log and the memtable. A failure poisons the engine
    /// (a partly written record would otherwise sit before later acknowledged ones), unless it
    /// is [`Error::NoSpace`]: an append that the full disk stopped, cut back off the segment.
    /// Takes the batches out of `batches` (leaving its allocation for the next group).
    fn commit_group(&self, batches: &mut Vec<WriteBatch>) -> Result<()> {
        self.check_writable()?;
        let mut wal = lock(&self.wal);
        let group: usize = batches.iter().map(|b| b.bytes).sum();
        let res = self.commit_group_locked(&mut wal, batches);
        match &res {
            // Every write of the group is refused (the batches are still there: nothing of
            // them was applied).
            Err(Error::NoSpace(why)) => {
                stats::add(&self.counters.no_space_refusals, batches.len() as u64);
                // A new segment that cannot have its reservation is written unreserved, so
                // what the group needs is its own bytes (and a margin for the next ones).
                let needed = group as u64 + LOG_REFUSAL_MARGIN;
                let mut st = lock(&self.no_space);
                st.log = Some(LogRefusal {
                    why: format!("the commit log cannot grow: {why}"),
                    needed,
                });
                self.log_refused.store(true, Ordering::Release);
            }
            Err(e) => self.poison(format!("commit-log write failed: {e}")),
            Ok(()) => {
                if self.log_refused.load(Ordering::Acquire) {
                    let mut st = lock(&self.no_space);
                    st.log = None;
                    self.log_refused.store(false, Ordering::Release);
                }
                // Under the commit-log lock, so `reserve_watch` is never contended.
                self.watch_reserve(group as u64);
            }
        }
        res
    }

    /// Looks free space up again for the reserve once a MiB was committed, or a second went
    /// by since the last look as seen every [`RESERVE_CLOCK_GROUPS`] groups (one `fstatvfs`).
    /// Called by each group's leader.
    fn watch_reserve(&self, committed: u64) {
        if self.reserve == 0 {
            return;
        }
        {
            let mut w = lock(&self.reserve_watch);
            w.bytes += committed;
            w.groups += 1;
            if w.bytes < RESERVE_CHECK_BYTES
                && (!w.groups.is_multiple_of(RESERVE_CLOCK_GROUPS)
                    || w.at.elapsed() < RESERVE_CHECK_EVERY)
            {
                return;
            }
            w.bytes = 0;
            w.at = Instant::now();
        }
        self.check_reserve();
    }

    /// Looks up free space and sets or clears `below_reserve`; returns whether the file
    /// system is below the reserve. One that does not say counts as having room.
    fn check_reserve(&self) -> bool {
        if self.reserve == 0 {
            return false;
        }
        let Some(free) = free_bytes(&self.lock_file) else {
            return false;
        };
        let was = self.below_reserve.load(Ordering::Acquire);
        // Once below, writes resume with a margin above the reserve, so that they do not
        // flap at its edge.
        let below = free
            < self
                .reserve
                .saturating_add(if was { LOG_REFUSAL_MARGIN } else { 0 });
        if below {
            self.reserve_free.store(free, Ordering::Release);
        }
        if below != was {
            self.below_reserve.store(below, Ordering::Release);
        }
        below
    }

    /// Why writes are refused while the file system is below the reserve.
    fn reserve_reason(&self) -> String {
        format!(
            "{} free on the data dir's file system, less than the {} kept for flushes and \
             compaction; deletes are accepted",
            mib(self.reserve_free.load(Ordering::Acquire)),
            mib(self.reserve)
        )
    }

    fn commit_group_locked(&self, wal: &mut Wal, batches: &mut Vec<WriteBatch>) -> Result<()> {
        let state = self.state.load();
        let fresh;
        let mem = if state.mem.approximate_bytes() >= self.opts.memtable_bytes {
            fresh = self.rotate(wal)?;
            // A new segment reserved its space, and a flush is on its way: the steps in which
            // free space goes fastest.
            self.check_reserve();
            &fresh
        } else {
            &state.mem
        };
        let user: usize = batches.iter().map(|b| b.bytes).sum();
        // Only the append's own failure for lack of space leaves the segment as it was.
        let framed = wal.append_batches(batches).map_err(Error::into_no_space)?;
        match self.opts.sync {
            SyncMode::Always => {
                wal.sync()?;
                stats::add(&self.counters.wal_syncs, 1);
            }
            SyncMode::Interval => self.wal_dirty.store(true, Ordering::Release),
            SyncMode::None => {}
        }
        let c = &mut wal.counts;
        c.writes += batches.len() as u64;
        c.groups += 1;
        c.user_bytes += user as u64;
        c.wal_bytes += framed as u64;
        for b in batches.drain(..) {
            mem.apply_owned(b);
        }
        Ok(())
    }

    /// Starts a new segment and memtable; the old memtable becomes immutable. Called with the
    /// `wal` lock held.
    fn rotate(&self, wal: &mut SegmentWriter) -> Result<Arc<Memtable>> {
        let n = self.next_file.fetch_add(1, Ordering::SeqCst);
        let new_seg = SegmentWriter::create(
            &self.dir,
            n,
            segment_reserve(&self.opts),
            maps_log(&self.opts),
        )
        .map_err(Error::into_no_space)?;
        if self.opts.sync != SyncMode::None {
            wal.sync()?;
        }
        *wal = new_seg;
        let fresh = Arc::new(Memtable::new(n));
        self.edit_state(|st| {
            let mut imm = Vec::with_capacity(st.imm.len() + 1);
            imm.push(st.mem.clone());
            imm.extend(st.imm.iter().cloned());
            State {
                mem: fresh.clone(),
                imm: Arc::new(imm),
                version: st.version.clone(),
            }
        });
        drop(lock(&self.bg));
        self.bg_cv.notify_all();
        Ok(fresh)
    }

    /// Waits while flushing or level-0 compaction is too far behind (bounded stall).
    fn maybe_stall(&self) -> Result<()> {
        let mut stalled: Option<Instant> = None;
        loop {
            let (imm_n, l0) = {
                let st = self.state.load();
                (st.imm.len(), st.version.levels[0].len())
            };
            let stop = imm_n >= self.opts.max_immutable_memtables.max(1)
                || l0 >= self.opts.l0_stop_trigger;
            if !stop || !self.opts.background_work {
                if let Some(t) = stalled {
                    stats::add(&self.counters.stall_micros, t.elapsed().as_micros() as u64);
                    stats::add(&self.counters.stalls, 1);
                }
                if self.opts.background_work && l0 >= self.opts.l0_slowdown_trigger {
                    let t = Instant::now();
                    std::thread::sleep(Duration::from_millis(1));
                    stats::add(&self.counters.stall_micros, t.elapsed().as_micros() as u64);
                    stats::add(&self.counters.slowdowns, 1);
                }
                return Ok(());
            }
            stalled.get_or_insert_with(Instant::now);
            self.check_writable()?;
            // The flush or compaction this write waits for cannot run until space is freed.
            if let Some(why) = self.no_space_reason() {
                stats::add(&self.counters.no_space_refusals, 1);
                return Err(Error::NoSpace(why));
            }
            let bg = lock(&self.bg);
            let _ = self
                .bg_cv
                .wait_timeout(bg, Duration::from_millis(10))
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    /// The newest value of `key`: `Ok(Some(found))`, or `Ok(None)` when `cache_only` and a
    /// block it needs is not in the cache.
    fn get(&self, key: &[u8], cache_only: bool) -> Result<Option<Option<Vec<u8>>>> {
        let st = self.state.load();
        let (mem, imm, version) = (&st.mem, &st.imm, &st.version);
        match mem.get(key) {
            Lookup::Found(v) => return Ok(Some(self.counted(Some(v)))),
            Lookup::Deleted => return Ok(Some(self.counted(None))),
            Lookup::Absent => {}
        }
        for m in imm.iter() {
            match m.get(key) {
                Lookup::Found(v) => return Ok(Some(self.counted(Some(v)))),
                Lookup::Deleted => return Ok(Some(self.counted(None))),
                Lookup::Absent => {}
            }
        }
        let hash = bloom::hash_key(key);
        let c = &self.counters;
        let probe = |t: &Table| -> Result<Option<Lookup>> {
            if !t.covers(key) {
                c.range_skips.add(1);
                return Ok(Some(Lookup::Absent));
            }
            c.bloom_checks.add(1);
            if !t.may_contain(hash) {
                c.bloom_skips.add(1);
                return Ok(Some(Lookup::Absent));
            }
            let Some(r) = t.get(key, Some(&self.cache), cache_only)? else {
                return Ok(None);
            };
            if r == Lookup::Absent {
                c.bloom_false_positives.add(1);
            }
            Ok(Some(r))
        };
        let tables =
            version.levels[0]
                .iter()
                .rev()
                .chain(version.levels.iter().skip(1).filter_map(|level| {
                    let i = level.partition_point(|t| t.meta.largest.as_slice() < key);
                    level.get(i)
                }));
        for t in tables {
            match probe(t)? {
                None => return Ok(None),
                Some(Lookup::Found(v)) => return Ok(Some(self.counted(Some(v)))),
                Some(Lookup::Deleted) => return Ok(Some(self.counted(None))),
                Some(Lookup::Absent) => {}
            }
        }
        Ok(Some(self.counted(None)))
    }

    /// Counts a completed lookup (one that fell back to disk is counted once, by the retry).
    fn counted(&self, found: Option<Vec<u8>>) -> Option<Vec<u8>> {
        self.counters.gets.add(1);
        found
    }

    fn scan(&self, start: Bound<&[u8]>, end: Bound<&[u8]>) -> Result<Scan> {
        let (mem, imm, version) = self.snapshot();
        let mut sources = vec![Source::Mem(mem.iter(start))];
        for m in imm.iter() {
            sources.push(Source::Mem(m.iter(start)));
        }
        let seek: Option<&[u8]> = match start {
            Bound::Included(s) | Bound::Excluded(s) => Some(s),
            Bound::Unbounded => None,
        };
        let overlaps = |t: &Table| {
            let after_start = seek.is_none_or(|s| t.meta.largest.as_slice() >= s);
            let before_end = match end {
                Bound::Included(e) => t.meta.smallest.as_slice() <= e,
                Bound::Excluded(e) => t.meta.smallest.as_slice() < e,
                Bound::Unbounded => true,
            };
            after_start && before_end
        };
        for t in version.levels[0].iter().rev() {
            if overlaps(t) {
                sources.push(Source::Table(TableIter::new(
                    t.clone(),
                    Some(self.cache.clone()),
                    seek,
                )?));
            }
        }
        for level in version.levels.iter().skip(1) {
            let tables: Vec<Arc<Table>> = level.iter().filter(|t| overlaps(t)).cloned().collect();
            if !tables.is_empty() {
                sources.push(Source::Level(LevelIter::new(
                    tables,
                    seek.map(<[u8]>::to_vec),
                    Some(self.cache.clone()),
                )));
            }
        }
        Ok(Scan::new(MergeIter::new(sources)?, start, end))
    }

    fn flush(&self) -> Result<()> {
        self.check_writable()?;
        {
            let mut wal = lock(&self.wal);
            let mem = self.state.load().mem.clone();
            if !mem.is_empty() {
                if let Err(e) = self.rotate(&mut wal) {
                    if !matches!(e, Error::NoSpace(_)) {
                        self.poison(format!("commit-log rotation failed: {e}"));
                    }
                    return Err(e);
                }
            }
        }
        while self.flush_oldest_imm()? {}
        Ok(())
    }

    /// Writes the oldest immutable memtable to a level-0 table and installs it. Returns false
    /// when there was none.
    fn flush_oldest_imm(&self) -> Result<bool> {
        let _f = lock(&self.flush_lock);
        let Some(imm) = self.snapshot().1.last().cloned() else {
            return Ok(false);
        };
        let res = self.flush_memtable(&imm).map_err(Error::into_no_space);
        match &res {
            Err(Error::NoSpace(why)) => self.held_up(Background::Flush, why),
            Err(e) => self.poison(format!("flush failed: {e}")),
            Ok(()) => self.resumed(Background::Flush),
        }
        res.map(|()| true)
    }

    fn flush_memtable(&self, imm: &Arc<Memtable>) -> Result<()> {
        let mut added = Vec::new();
        let mut built = None;
        if !imm.is_empty() {
            let number = self.next_file.fetch_add(1, Ordering::SeqCst);
            let table = || -> Result<Table> {
                let mut b = TableBuilder::create(&self.dir, number, self.build)?;
                if self.opts.cache_flushed_blocks {
                    b = b.warm_cache(self.cache.clone());
                }
                if let Err(e) = imm.for_each(|k, v| b.add(k, v)) {
                    b.abandon();
                    return Err(e);
                }
                let meta = b.finish()?;
                stats::add(&self.counters.flush_bytes, meta.size);
                Table::open(&self.dir, number, Some(meta.size))
            };
            match table() {
                Ok(t) => added.push((0, Arc::new(t))),
                Err(e) => {
                    // Not in any version: gone, so a full disk gets its space back.
                    remove_table_files(&self.dir, [number]);
                    return Err(e);
                }
            }
            built = Some(number);
        }
        {
            let mut ed = lock(&self.edit);
            let (next_log, cur) = {
                let st = self.state.load();
                let n = st.imm.len();
                let next = if n >= 2 {
                    st.imm[n - 2].segment
                } else {
                    st.mem.segment
                };
                (next, st.version.clone())
            };
            let synced = match added.is_empty() {
                true => Ok(()),
                false => crate::fsutil::sync_dir(&self.dir),
            };
            let v = cur.with_edit(&HashSet::new(), added);
            let stored = synced.and_then(|()| {
                v.to_manifest(self.next_file.load(Ordering::SeqCst), next_log)
                    .store(&self.dir)
            });
            if let Err(e) = stored {
                if e.is_no_space() {
                    // The manifest is as it was (see `write_atomic`): the table is nobody's.
                    remove_table_files(&self.dir, built);
                }
                return Err(e);
            }
            ed.log_number = next_log;
            let version = Arc::new(v);
            self.edit_state(|st| State {
                mem: st.mem.clone(),
                imm: Arc::new(
                    st.imm
                        .iter()
                        .filter(|m| !Arc::ptr_eq(m, imm))
                        .cloned()
                        .collect(),
                ),
                version,
            });
        }
        stats::add(&self.counters.flushes, 1);
        self.remove_old_segments()?;
        self.check_reserve();
        drop(lock(&self.bg));
        self.bg_cv.notify_all();
        Ok(())
    }

    /// Deletes commit-log segments older than the manifest's log number.
    fn remove_old_segments(&self) -> Result<()> {
        let log_number = lock(&self.edit).log_number;
        for n in list_dir(&self.dir)? {
            if let Some(num) = file_number(&n, ".log") {
                if num < log_number {
                    let p = self.dir.join(&n);
                    std::fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
                }
            }
        }
        Ok(())
    }

    /// Installs a version edit durably. `log_number` moves the commit-log start forward.
    fn install(
        &self,
        removed: &HashSet<u64>,
        added: Vec<(usize, Arc<Table>)>,
        log_number: Option<u64>,
    ) -> Result<()> {
        let mut ed = lock(&self.edit);
        let cur = self.snapshot().2;
        let v = cur.with_edit(removed, added);
        v.check().map_err(|w| {
            Error::corruption(
                self.dir.join(MANIFEST),
                0,
                format!("edit would break level order: {w}"),
            )
        })?;
        let log = log_number.unwrap_or(ed.log_number);
        v.to_manifest(self.next_file.load(Ordering::SeqCst), log)
            .store(&self.dir)?;
        ed.log_number = log;
        let version = Arc::new(v);
        self.edit_state(|st| State {
            version,
            ..st.clone()
        });
        Ok(())
    }

    fn checkpoint(&self, dest: &Path) -> Result<Checkpoint> {
        if dest.exists() {
            return Err(Error::InvalidArgument(format!(
                "{} exists: a checkpoint goes to a new directory",
                dest.display()
            )));
        }
        self.flush()?;
        // Holding the version keeps its tables on disk while they are linked, whatever
        // compaction does meanwhile.
        let version = self.snapshot().2;
        let next_file = self.next_file.load(Ordering::SeqCst);
        std::fs::create_dir_all(dest).map_err(|e| Error::io(dest, e))?;
        let manifest = version.to_manifest(next_file, next_file);
        let mut out = Checkpoint::default();
        for (_, meta) in &manifest.tables {
            let from = crate::sstable::table_path(&self.dir, meta.number);
            let to = crate::sstable::table_path(dest, meta.number);
            if std::fs::hard_link(&from, &to).is_ok() {
                out.tables_linked += 1;
            } else {
                std::fs::copy(&from, &to).map_err(|e| Error::io(&to, e))?;
                std::fs::File::open(&to)
                    .and_then(|f| f.sync_all())
                    .map_err(|e| Error::io(&to, e))?;
                out.tables_copied += 1;
            }
            out.bytes += meta.size;
        }
        crate::fsutil::sync_dir(dest)?;
        manifest.store(dest)?;
        Ok(out)
    }

    fn compact_step(&self) -> Result<bool> {
        let _c = lock(&self.compaction_lock);
        let v = self.snapshot().2;
        let job = {
            let mut ed = lock(&self.edit);
            compaction::pick(&v, &self.opts, &mut ed.pointers)
        };
        match job {
            Some(job) => {
                self.execute(&job)?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn compact_all(&self) -> Result<()> {
        self.flush()?;
        let _c = lock(&self.compaction_lock);
        let v = self.snapshot().2;
        if let Some(job) = compaction::full(&v) {
            self.execute(&job)?;
        }
        Ok(())
    }

    fn execute(&self, job: &Job) -> Result<()> {
        let removed: HashSet<u64> = job.input_numbers().collect();
        if job.trivial_move {
            let added = job
                .inputs
                .iter()
                .flat_map(|(_, ts)| ts.iter().map(|t| (job.output_level, t.clone())))
                .collect();
            self.install(&removed, added, None)?;
            stats::add(&self.counters.compactions, 1);
            stats::add(&self.counters.trivial_moves, 1);
            return Ok(());
        }
        self.check_room_for(job)?;
        let numbers = Mutex::new(Vec::new());
        let mut written = 0;
        let installed = compaction::run(job, &self.dir, &self.opts, self.build, || {
            let n = self.next_file.fetch_add(1, Ordering::SeqCst);
            lock(&numbers).push(n);
            n
        })
        .and_then(|outputs| {
            let mut added = Vec::new();
            for m in &outputs {
                written += m.size;
                added.push((
                    job.output_level,
                    Arc::new(Table::open(&self.dir, m.number, Some(m.size))?),
                ));
            }
            crate::fsutil::sync_dir(&self.dir)?;
            self.install(&removed, added, None)
        });
        if let Err(e) = installed {
            if e.is_no_space() {
                // No version names the outputs (the manifest is as it was): free their space.
                remove_table_files(&self.dir, lock(&numbers).drain(..));
            }
            return Err(e);
        }
        for (_, ts) in &job.inputs {
            for t in ts {
                t.mark_obsolete();
            }
        }
        let c = &self.counters;
        stats::add(&c.compactions, 1);
        stats::add(&c.compaction_bytes_read, job.input_bytes());
        stats::add(&c.compaction_bytes_written, written);
        drop(lock(&self.bg));
        self.bg_cv.notify_all();
        Ok(())
    }

    /// Refuses (`NoSpace`) to start a compaction that would not fit: it writes its output,
    /// up to the size of its inputs, before it removes them, and the commit log needs room for
    /// a segment meanwhile. Started anyway it would take the last free space from the writes
    /// (deletes included) and, failing, write it all again a second later. RocksDB's
    /// SstFileManager makes the same check.
    fn check_room_for(&self, job: &Job) -> Result<()> {
        let input = job.input_bytes();
        let need = input.saturating_add(segment_reserve(&self.opts));
        match free_bytes(&self.lock_file) {
            Some(free) if free < need => Err(Error::NoSpace(format!(
                "a compaction of {} of tables waits for free space: it writes its output \
                 before it removes its inputs, and needs {} free; the file system has {}",
                mib(input),
                mib(need),
                mib(free)
            ))),
            _ => Ok(()),
        }
    }

    fn flush_loop(&self) {
        loop {
            {
                let mut bg = lock(&self.bg);
                loop {
                    if bg.shutdown || self.poisoned.load(Ordering::Acquire) {
                        return;
                    }
                    if !self.snapshot().1.is_empty() {
                        break;
                    }
                    bg = self.bg_cv.wait(bg).unwrap_or_else(|e| e.into_inner());
                }
            }
            match self.flush_oldest_imm() {
                Ok(_) => {}
                Err(e) if e.is_no_space() => self.pause_after_no_space(),
                Err(_) => return, // poisoned by flush_oldest_imm
            }
        }
    }

    /// Waits a second (less if the engine shuts down) before background work that failed
    /// for lack of space tries again.
    fn pause_after_no_space(&self) {
        let until = Instant::now() + NO_SPACE_RETRY;
        let mut bg = lock(&self.bg);
        loop {
            let now = Instant::now();
            if bg.shutdown || now >= until {
                return;
            }
            bg = self
                .bg_cv
                .wait_timeout(bg, until - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Background work `what` failed for lack of space, with `why`.
    fn held_up(&self, what: Background, why: &str) {
        let mut st = lock(&self.no_space);
        let slot = match what {
            Background::Flush => &mut st.flush,
            Background::Compaction => &mut st.compaction,
        };
        *slot = Some(why.to_string());
        drop(st);
        stats::add(&self.counters.no_space_retries, 1);
        // Writers stalled on this work are refused instead of waiting for it.
        drop(lock(&self.bg));
        self.bg_cv.notify_all();
    }

    /// Background work `what` succeeded.
    fn resumed(&self, what: Background) {
        let mut st = lock(&self.no_space);
        match what {
            Background::Flush => st.flush = None,
            Background::Compaction => st.compaction = None,
        }
    }

    /// Why background work is held up by a full disk, if it is.
    fn no_space_reason(&self) -> Option<String> {
        lock(&self.no_space).background()
    }

    /// [`Engine::no_space`]: held-up background work, else a refused commit-log write that
    /// would still not fit.
    fn disk_full_reason(&self) -> Option<String> {
        {
            let mut st = lock(&self.no_space);
            if let Some(why) = st.background() {
                return Some(why);
            }
            if let Some(refusal) = &st.log {
                match free_bytes(&self.lock_file) {
                    Some(free) if free >= refusal.needed => {
                        st.log = None;
                        self.log_refused.store(false, Ordering::Release);
                    }
                    _ => return Some(refusal.why.clone()),
                }
            }
        }
        // Looked up now, so this also sees a disk that something else filled while no write
        // came.
        self.check_reserve().then(|| self.reserve_reason())
    }

    fn compaction_loop(&self) {
        loop {
            {
                let mut bg = lock(&self.bg);
                loop {
                    if bg.shutdown || self.poisoned.load(Ordering::Acquire) {
                        return;
                    }
                    if compaction::score(&self.snapshot().2, &self.opts).0 >= 1.0 {
                        break;
                    }
                    bg = self
                        .bg_cv
                        .wait_timeout(bg, Duration::from_secs(1))
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
            match self.compact_step().map_err(Error::into_no_space) {
                Ok(_) => self.resumed(Background::Compaction),
                Err(Error::NoSpace(why)) => {
                    self.held_up(Background::Compaction, &why);
                    self.pause_after_no_space();
                }
                Err(e) => {
                    self.poison(format!("compaction failed: {e}"));
                    return;
                }
            }
        }
    }

    fn sync_loop(&self) {
        let period = self.opts.sync_interval.max(Duration::from_millis(1));
        let mut next = Instant::now() + period;
        loop {
            {
                let mut bg = lock(&self.bg);
                loop {
                    if bg.shutdown || self.poisoned.load(Ordering::Acquire) {
                        return;
                    }
                    let now = Instant::now();
                    if now >= next {
                        break;
                    }
                    bg = self
                        .bg_cv
                        .wait_timeout(bg, next - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
            next = Instant::now() + period;
            if self.wal_dirty.swap(false, Ordering::AcqRel) {
                let (file, path) = {
                    let w = lock(&self.wal);
                    (w.file.clone(), w.path.clone())
                };
                if let Err(e) = file.sync_data() {
                    self.poison(format!(
                        "commit-log fsync of {} failed: {e}",
                        path.display()
                    ));
                    return;
                }
                stats::add(&self.counters.wal_syncs, 1);
            }
        }
    }

    fn stats(&self) -> Stats {
        let (mem, imm, v) = self.snapshot();
        let c = &self.counters;
        let w = {
            let wal = lock(&self.wal);
            let c = &wal.counts;
            [c.writes, c.groups, c.user_bytes, c.wal_bytes]
        };
        let [writes, write_groups, user, wal_bytes] = w;
        let flush = stats::get(&c.flush_bytes);
        let comp = stats::get(&c.compaction_bytes_written);
        let hits = self.cache.hits.get();
        let misses = self.cache.misses.get();
        Stats {
            level_bytes: (0..v.levels.len()).map(|l| v.level_bytes(l)).collect(),
            level_tables: v.levels.iter().map(Vec::len).collect(),
            table_count: v.table_count(),
            memtable_bytes: mem.approximate_bytes(),
            immutable_memtables: imm.len(),
            writes,
            write_groups,
            wal_syncs: stats::get(&c.wal_syncs),
            user_bytes_written: user,
            wal_bytes_written: wal_bytes,
            flushes: stats::get(&c.flushes),
            flush_bytes_written: flush,
            compactions: stats::get(&c.compactions),
            trivial_moves: stats::get(&c.trivial_moves),
            compaction_bytes_read: stats::get(&c.compaction_bytes_read),
            compaction_bytes_written: comp,
            write_amplification: if user == 0 {
                0.0
            } else {
                (flush + comp) as f64 / user as f64
            },
            stall_micros: stats::get(&c.stall_micros),
            stalls: stats::get(&c.stalls),
            slowdowns: stats::get(&c.slowdowns),
            gets: c.gets.get(),
            range_skips: c.range_skips.get(),
            bloom_checks: c.bloom_checks.get(),
            bloom_skips: c.bloom_skips.get(),
            bloom_false_positives: c.bloom_false_positives.get(),
            no_space_refusals: stats::get(&c.no_space_refusals),
            no_space_retries: stats::get(&c.no_space_retries),
            no_space: self.disk_full_reason(),
            reserve_bytes: self.reserve,
            disk_free_bytes: free_bytes(&self.lock_file),
            cache_hits: hits,
            cache_misses: misses,
            cache_hit_ratio: if hits + misses == 0 {
                0.0
            } else {
                hits as f64 / (hits + misses) as f64
            },
            page_cache_reads: stats::get(&self.cache.page_cache_reads),
            cache_bytes: self.cache.used(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commit_log::FAIL_SYNC;

    #[test]
    fn a_failed_fsync_poisons_the_engine_and_no_later_write_is_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let opts = Options {
            background_work: false,
            ..Options::default()
        };
        let e = Engine::open(dir.path(), opts.clone()).unwrap();
        e.put(b"a", b"1").unwrap();
        assert_eq!(e.failure(), None);
        FAIL_SYNC.with(|f| f.set(true));
        let err = e.put(b"b", b"2").unwrap_err();
        FAIL_SYNC.with(|f| f.set(false));
        assert!(matches!(err, Error::Io { .. }), "{err}");
        assert!(err.to_string().contains("injected fsync failure"));
        // The unacknowledged write is not visible, and every later write is refused.
        assert_eq!(e.get(b"b").unwrap(), None);
        let err = e.put(b"c", b"3").unwrap_err();
        assert!(matches!(err, Error::Poisoned(_)), "{err}");
        assert!(err.to_string().contains("fsync"), "{err}");
        let failure = e.failure().expect("the engine says it failed");
        assert!(failure.contains("injected fsync failure"), "{failure}");
        assert!(matches!(e.flush(), Err(Error::Poisoned(_))));
        assert_eq!(e.get(b"a").unwrap(), Some(b"1".to_vec()));
        drop(e);
        // Reopening recovers the acknowledged write.
        let e = Engine::open(dir.path(), opts).unwrap();
        assert_eq!(e.get(b"a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(e.get(b"c").unwrap(), None);
    }

    #[test]
    fn an_append_the_full_disk_stops_refuses_its_group_only_and_leaves_no_torn_record() {
        use crate::commit_log::{FAIL_WRITE, NO_MAP};
        let dir = tempfile::tempdir().unwrap();
        let opts = Options {
            background_work: false,
            ..Options::default()
        };
        // Appends by write(2), the path a full disk can stop midway.
        NO_MAP.with(|f| f.set(true));
        let e = Engine::open(dir.path(), opts.clone()).unwrap();
        NO_MAP.with(|f| f.set(false));
        e.put(b"a", b"1").unwrap();
        let mut big = WriteBatch::new();
        for i in 0..50u32 {
            big.put(format!("big{i:03}").as_bytes(), [b'x'; 200]);
        }
        FAIL_WRITE.with(|f| f.set(true));
        let err = e.write(big).unwrap_err();
        FAIL_WRITE.with(|f| f.set(false));
        assert!(matches!(err, Error::NoSpace(_)), "{err}");
        assert!(err.is_no_space());
        assert!(
            err.to_string()
                .contains("writes resume once space is freed"),
            "{err}"
        );
        assert_eq!(e.get(b"big000").unwrap(), None, "not applied");
        assert_eq!(e.stats().no_space_refusals, 1);
        // The disk has room (the failure was injected): a refused append shows as a full
        // disk only while the file system lacks what it needed.
        assert_eq!(e.no_space(), None);
        // Not poisoned: the next (shorter) write is acknowledged and lands where the torn
        // group began.
        e.put(b"b", b"2").unwrap();
        assert_eq!(e.get(b"b").unwrap(), Some(b"2".to_vec()));
        drop(e);
        // Strict recovery (damage refuses the start) finds exactly the acknowledged writes.
        let e = Engine::open(dir.path(), opts).unwrap();
        assert_eq!(e.get(b"a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(e.get(b"b").unwrap(), Some(b"2".to_vec()));
        for i in 0..50u32 {
            assert_eq!(e.get(format!("big{i:03}").as_bytes()).unwrap(), None);
        }
    }

    thread_local! {
        /// Free space `free_bytes` answers on this thread instead of asking the file system.
        pub(super) static FAKE_FREE: std::cell::Cell<Option<u64>> =
            const { std::cell::Cell::new(None) };
    }

    fn with_free<T>(free: Option<u64>, f: impl FnOnce() -> T) -> T {
        FAKE_FREE.with(|c| c.set(free));
        let out = f();
        FAKE_FREE.with(|c| c.set(None));
        out
    }

    #[test]
    fn writes_resume_a_mib_above_the_reserve_and_stop_again_below_it() {
        let dir = tempfile::tempdir().unwrap();
        let opts = Options {
            reserve_bytes: Some(100 << 20),
            background_work: false,
            ..Options::default()
        };
        let e = Engine::open(dir.path(), opts).unwrap();
        with_free(Some(99 << 20), || {
            assert!(e.no_space().is_some());
            let err = e.put(b"a", b"1").unwrap_err();
            assert!(err.to_string().contains("99.0 MiB free"), "{err}");
        });
        // Back at the reserve, but not a MiB above it: still refused.
        with_free(Some((100 << 20) + (512 << 10)), || {
            assert!(e.put(b"a", b"1").unwrap_err().is_no_space());
        });
        with_free(Some(102 << 20), || {
            e.put(b"a", b"1").unwrap();
            assert_eq!(e.no_space(), None);
        });
        // Below again: a look (here /health's) finds it, and the next put is refused.
        with_free(Some(99 << 20), || {
            assert!(e.no_space().is_some());
            assert!(e.put(b"b", b"2").unwrap_err().is_no_space());
        });
    }

    #[test]
    fn a_compaction_that_would_not_fit_is_not_started() {
        let dir = tempfile::tempdir().unwrap();
        let opts = Options {
            reserve_bytes: Some(0),
            background_work: false,
            ..Options::default()
        };
        let e = Engine::open(dir.path(), opts).unwrap();
        for round in 0..3u32 {
            for i in 0..2000u32 {
                e.put(
                    format!("k{i:05}").as_bytes(),
                    format!("v{round}").repeat(50).as_bytes(),
                )
                .unwrap();
            }
            e.flush().unwrap();
        }
        let files = |d: &Path| std::fs::read_dir(d).unwrap().count();
        let tables = e.stats().level_tables;
        let bytes: u64 = e.stats().level_bytes.iter().sum();
        let before = (tables.clone(), files(dir.path()));
        assert!(tables.iter().sum::<usize>() >= 2, "{tables:?}");
        // Less free than the tables' size and a commit-log segment.
        let err = with_free(Some(1 << 20), || e.compact().unwrap_err());
        assert!(err.is_no_space(), "{err}");
        assert!(err.to_string().contains("waits for free space"), "{err}");
        assert_eq!((e.stats().level_tables, files(dir.path())), before);
        // With room it runs, and the overwritten values go.
        e.compact().unwrap();
        assert!(e.stats().level_bytes.iter().sum::<u64>() < bytes);
        assert_eq!(e.get(b"k00007").unwrap(), Some(b"v2".repeat(50)));
    }

    #[test]
    fn below_the_reserve_puts_are_refused_and_deletes_flushes_and_reads_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let e = Engine::open(dir.path(), Options::default()).unwrap();
        // The default: 5% of the file system, at most 1 GiB; this disk has more free.
        let reserve = e.inner.reserve;
        assert!(reserve > 0 && reserve <= 1 << 30, "{reserve}");
        e.put(b"a", b"1").unwrap();
        e.put(b"b", b"2").unwrap();
        drop(e);
        // More than any file system has free: every write is below the reserve from the start.
        let opts = Options {
            reserve_bytes: Some(u64::MAX / 4),
            background_work: false,
            ..Options::default()
        };
        let e = Engine::open(dir.path(), opts).unwrap();
        let why = e.no_space().expect("below the reserve");
        assert!(why.contains("kept for flushes and compaction"), "{why}");
        assert!(why.contains("deletes are accepted"), "{why}");
        let err = e.put(b"c", b"3").unwrap_err();
        assert!(err.is_no_space(), "{err}");
        assert!(err
            .to_string()
            .contains("writes resume once space is freed"));
        // The async path refuses the same way, and settles the batch as not applied.
        let settled = Arc::new(Mutex::new(None));
        let s = settled.clone();
        let mut batch = WriteBatch::new();
        batch.put(b"c".to_vec(), b"3".to_vec());
        assert!(e
            .submit_with(batch, move |ok| *s.lock().unwrap() = Some(ok))
            .is_err());
        assert_eq!(*settled.lock().unwrap(), Some(false));
        assert_eq!(e.stats().no_space_refusals, 2);
        assert_eq!(e.get(b"c").unwrap(), None);
        // Deletes go on, and so does a put marked as freeing space (a tombstone value).
        e.delete(b"a").unwrap();
        let mut tombstone = WriteBatch::new();
        tombstone.put(b"b".to_vec(), Vec::new());
        tombstone.mark_freeing();
        e.write(tombstone).unwrap();
        assert_eq!(e.get(b"a").unwrap(), None);
        assert_eq!(e.get(b"b").unwrap(), Some(Vec::new()));
        // A batch with a delete and a plain put is a put.
        let mut mixed = WriteBatch::new();
        mixed.delete(b"b".to_vec());
        mixed.put(b"d".to_vec(), b"4".to_vec());
        assert!(e.write(mixed).unwrap_err().is_no_space());
        // Flushing and compaction use the reserve.
        e.flush().unwrap();
        e.compact().unwrap();
        assert_eq!(e.get(b"b").unwrap(), Some(Vec::new()));
        drop(e);
        // No reserve: writes go on.
        let opts = Options {
            reserve_bytes: Some(0),
            ..Options::default()
        };
        let e = Engine::open(dir.path(), opts).unwrap();
        e.put(b"c", b"3").unwrap();
        assert_eq!(e.no_space(), None);
    }

    #[test]
    fn a_checkpoint_opens_as_the_data_stood_and_outlives_compaction_of_the_original() {
        let dir = tempfile::tempdir().unwrap();
        let opts = Options {
            background_work: false,
            ..Options::default()
        };
        let e = Engine::open(dir.path().join("db"), opts.clone()).unwrap();
        for i in 0..500u32 {
            e.put(format!("k{i:04}").as_bytes(), b"old").unwrap();
        }
        e.flush().unwrap();
        // Some in tables, some only in the memtable (and the commit log), some deleted.
        for i in 0..100u32 {
            e.put(format!("k{i:04}").as_bytes(), b"new").unwrap();
        }
        for i in 400..500u32 {
            e.delete(format!("k{i:04}").as_bytes()).unwrap();
        }
        let snap = dir.path().join("snap");
        let c = e.checkpoint(&snap).unwrap();
        assert_eq!(c.tables_linked + c.tables_copied, 2, "{c:?}");
        assert!(c.bytes > 0);
        assert!(
            !std::fs::read_dir(&snap).unwrap().any(|f| f
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".log")),
            "no commit log needed"
        );
        // A second checkpoint to the same place is refused.
        assert!(matches!(
            e.checkpoint(&snap),
            Err(Error::InvalidArgument(_))
        ));
        // The original moves on: overwrites, and a full compaction that drops the tables the
        // checkpoint links to.
        for i in 0..500u32 {
            e.put(format!("k{i:04}").as_bytes(), b"later").unwrap();
        }
        e.compact().unwrap();
        drop(e);
        let c = Engine::open(&snap, opts).unwrap();
        for i in 0..500u32 {
            let want = match i {
                0..100 => Some(b"new".to_vec()),
                400.. => None,
                _ => Some(b"old".to_vec()),
            };
            assert_eq!(c.get(format!("k{i:04}").as_bytes()).unwrap(), want, "k{i}");
        }
        // And it is a live engine of its own.
        c.put(b"k0000", b"restored").unwrap();
        assert_eq!(c.get(b"k0000").unwrap(), Some(b"restored".to_vec()));
    }

    /// Keys and values of assorted sizes, one larger than a block.
    fn assorted(i: usize) -> (Vec<u8>, Vec<u8>) {
        let len = if i == 7 { 10_000 } else { 20 + i % 300 };
        (
            format!("key{i:05}").into_bytes(),
            vec![b'a' + (i % 26) as u8; len],
        )
    }

    /// An engine in `dir` holding `assorted(0..3000)` in one table (key 10 deleted when
    /// `delete_10`), nothing in its memtable.
    fn flushed_engine(dir: &Path, cache_flushed_blocks: bool, delete_10: bool) -> Engine {
        let opts = Options {
            background_work: false,
            cache_flushed_blocks,
            ..Options::default()
        };
        let e = Engine::open(dir, opts).unwrap();
        for i in 0..3000 {
            let (k, v) = assorted(i);
            e.put(&k, &v).unwrap();
        }
        if delete_10 {
            e.delete(b"key00010").unwrap();
        }
        e.flush().unwrap();
        assert_eq!(e.stats().table_count, 1);
        e
    }

    #[test]
    fn a_flushed_table_is_readable_from_memory_when_its_blocks_are_cached_on_flush() {
        for cache_flushed_blocks in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let e = flushed_engine(dir.path(), cache_flushed_blocks, true);
            for i in 0..3000 {
                let (k, v) = assorted(i);
                let want = if i == 10 { None } else { Some(v) };
                // Without the flushed blocks cached, the just written file is in the OS's
                // page cache, where a memory-only read finds it too.
                assert_eq!(e.get_cached(&k).unwrap(), Some(want.clone()), "key {i}");
                assert_eq!(e.get(&k).unwrap(), want, "key {i}");
            }
            assert_eq!(e.get_cached(b"key99999").unwrap(), Some(None));
            let s = e.stats();
            assert_eq!(s.cache_misses == 0, cache_flushed_blocks, "{s:?}");
            assert_eq!(s.page_cache_reads == 0, cache_flushed_blocks, "{s:?}");
            e.close().unwrap();
        }
    }

    #[test]
    fn writes_would_stall_only_once_the_immutable_memtables_reach_their_limit() {
        let dir = tempfile::tempdir().unwrap();
        let opts = Options {
            background_work: false,
            sync: SyncMode::Interval,
            memtable_bytes: 256 << 10,
            max_immutable_memtables: 2,
            ..Options::default()
        };
        let e = Engine::open(dir.path(), opts).unwrap();
        let mut i = 0u32;
        let mut fill_until = |n: usize| {
            while e.stats().immutable_memtables < n {
                assert!(
                    !e.write_would_stall(),
                    "{} waiting",
                    e.stats().immutable_memtables
                );
                e.put(&i.to_be_bytes(), &[7; 1000]).unwrap();
                i += 1;
            }
        };
        fill_until(1);
        fill_until(2);
        assert!(e.write_would_stall(), "two memtables wait for their flush");
        e.flush().unwrap();
        assert_eq!(e.stats().immutable_memtables, 0);
        assert!(!e.write_would_stall());
    }

    use crate::testing::evict_from_page_cache;

    #[test]
    fn a_memory_only_read_takes_blocks_the_os_holds_and_never_waits_for_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let e = flushed_engine(dir.path(), false, false);
        let table = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|d| d.unwrap().path())
            .find(|p| p.extension().is_some_and(|x| x == "sst"))
            .unwrap();
        // Not in the block cache, not in the page cache: only the disk has it. (RWF_NOWAIT is
        // best effort: on some kernels about one read in a hundred right after the eviction
        // still finds its page, read in on the spot and counted as a page-cache read; a key
        // of another block is tried then.)
        let only_on_disk = |candidates: &[usize]| {
            candidates
                .iter()
                .map(|&i| assorted(i))
                .find(|(k, _)| {
                    evict_from_page_cache(&table);
                    e.get_cached(k).unwrap().is_none()
                })
                .expect("no memory-only read of five missed")
        };
        let (k, v) = only_on_disk(&[1234, 1500, 1800, 2100, 2400]);
        // Once the OS has the file in memory again, the memory-only read finds the block.
        let base = e.stats().page_cache_reads;
        std::fs::read(&table).unwrap();
        assert_eq!(e.get_cached(&k).unwrap(), Some(Some(v.clone())));
        assert_eq!(e.stats().page_cache_reads, base + 1);
        // And the block cache holds it from then on, even with the page cache dropped.
        evict_from_page_cache(&table);
        assert_eq!(e.get_cached(&k).unwrap(), Some(Some(v)));
        assert_eq!(e.stats().page_cache_reads, base + 1);
        // A key of another block is back to needing the disk.
        let (far, far_v) = only_on_disk(&[10, 300, 600, 900, 2700]);
        assert_eq!(e.get(&far).unwrap(), Some(far_v));
        e.close().unwrap();
    }

    #[test]
    fn a_scan_reads_through_the_block_cache_without_filling_it() {
        let dir = tempfile::tempdir().unwrap();
        let e = flushed_engine(dir.path(), false, false);
        let all = |e: &Engine| {
            let mut n = 0;
            for kv in e.scan(Bound::Unbounded, Bound::Unbounded).unwrap() {
                kv.unwrap();
                n += 1;
            }
            n
        };
        assert_eq!(all(&e), 3000);
        assert_eq!(e.stats().cache_bytes, 0, "a scan left blocks in the cache");
        // A point read caches its block; a scan then finds that block there.
        let (k, v) = assorted(1500);
        assert_eq!(e.get(&k).unwrap(), Some(v));
        let cached = e.stats();
        assert!(cached.cache_bytes > 0);
        assert_eq!(all(&e), 3000);
        let after = e.stats();
        assert_eq!(after.cache_bytes, cached.cache_bytes);
        assert!(after.cache_hits > cached.cache_hits, "{after:?}");
        e.close().unwrap();
    }
}

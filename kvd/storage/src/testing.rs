//! Helpers for tests of the engine and of what runs on it (the engine's unit tests and the
//! workspace's process tests), so each behaviour that needs them is set up one way. Hidden
//! from the documentation: nothing but tests should depend on them.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

/// Drops a file's pages from the OS's page cache (clean pages: tables are fsynced) and checks
/// that none is left resident. Readahead still in flight (a scan that just ended) may bring
/// pages back after the advice, so it is repeated until none is resident.
///
/// Panics when the file is on tmpfs (its pages are memory itself: advice cannot drop them,
/// and a test would fail for the wrong reason), or when pages stay for 10 s.
pub fn evict_from_page_cache(path: &Path) {
    let f = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    // SAFETY: statfs is plain data (all zeros is a valid value), filled by fstatfs for an
    // open descriptor.
    let (st, rc) = unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        let rc = libc::fstatfs(f.as_raw_fd(), &mut st);
        (st, rc)
    };
    assert_eq!(rc, 0, "fstatfs {}", path.display());
    assert!(
        st.f_type != libc::TMPFS_MAGIC,
        "{} is on tmpfs: this test needs a disk-backed temporary directory (TMPDIR)",
        path.display()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // SAFETY: an open descriptor; the advice changes no contents.
        let r = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(r, 0, "posix_fadvise {}", path.display());
        let resident = resident_pages(&f);
        if resident == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} keeps {resident} pages in the page cache",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Pages of the file `f` in the page cache (mincore of a read-only mapping of it).
fn resident_pages(f: &File) -> usize {
    let len = f.metadata().map_or(0, |m| m.len()) as usize;
    if len == 0 {
        return 0;
    }
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    let mut vec = vec![0u8; len.div_ceil(page)];
    // SAFETY: a shared read-only mapping of an open file's `len` bytes, only passed to
    // mincore (never read through) and unmapped before returning; `vec` has a byte per page.
    unsafe {
        let addr = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        assert_ne!(addr, libc::MAP_FAILED, "mmap");
        let rc = libc::mincore(addr, len, vec.as_mut_ptr());
        libc::munmap(addr, len);
        assert_eq!(rc, 0, "mincore");
    }
    vec.iter().filter(|&&b| b & 1 == 1).count()
}

/// Directories whose commit-log appends fail (see [`fail_appends_in`]).
#[cfg(any(test, feature = "fault-injection"))]
static FAILING: std::sync::Mutex<Vec<std::path::PathBuf>> = std::sync::Mutex::new(Vec::new());

/// From now on (`on`) or no longer, commit-log appends that make a system call (a segment
/// not written through a mapping, as with `SyncMode::Always`) under `dir` write half their
/// bytes and fail with ENOSPC, as on a full disk. Scoped to a directory so tests running in
/// parallel in one process do not see each other's faults. Only with the `fault-injection`
/// feature (kvd's tests turn it on).
#[cfg(feature = "fault-injection")]
pub fn fail_appends_in(dir: &Path, on: bool) {
    let mut failing = FAILING.lock().unwrap_or_else(|e| e.into_inner());
    failing.retain(|d| d != dir);
    if on {
        failing.push(dir.to_path_buf());
    }
}

/// Whether appends to the segment at `path` are to fail (see [`fail_appends_in`]).
#[cfg(any(test, feature = "fault-injection"))]
pub(crate) fn appends_fail(path: &Path) -> bool {
    let failing = FAILING.lock().unwrap_or_else(|e| e.into_inner());
    failing.iter().any(|d| path.starts_with(d))
}

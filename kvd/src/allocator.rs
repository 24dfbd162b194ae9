//! The node's heap: jemalloc, or the C library's malloc when `KVD_ALLOCATOR=system` is set
//! in the environment (read once, at the first allocation, before `main`).
//!
//! jemalloc's per-thread caches hand out and take back the small blocks of a request (about
//! thirty per put: decoded fields, sibling sets, the new state, the answer) in a fraction of
//! glibc's instructions: callgrind, one node under puts, 26.0k -> 21.9k instructions per
//! request; p99 lower in six alternating rounds of six. Blocks often die on another worker
//! thread than the one that made them, which is where glibc's free takes its slow path.
//!
//! The system allocator stays selectable because valgrind's heap tools (dhat, used by
//! `kvd/bench/cost.sh` to count allocations per request) see only calls to `malloc`, and to
//! compare the two on a given machine.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU8, Ordering};

use tikv_jemallocator::Jemalloc;

/// The global allocator of the `kvd` binary.
pub struct Allocator;

const UNKNOWN: u8 = 0;
const SYSTEM: u8 = 1;
const JEMALLOC: u8 = 2;

/// Which allocator serves this process. Decided by the first allocation, which happens on the
/// main thread before any other thread exists; it never changes after that, so every block is
/// freed by the allocator that made it.
static CHOICE: AtomicU8 = AtomicU8::new(UNKNOWN);

#[inline]
fn system() -> bool {
    match CHOICE.load(Ordering::Relaxed) {
        SYSTEM => true,
        JEMALLOC => false,
        _ => choose(),
    }
}

#[cold]
fn choose() -> bool {
    // SAFETY: getenv with a NUL-terminated name; nothing modifies the environment this early
    // (no other thread exists yet). std::env::var would allocate, here, inside the allocator.
    let value = unsafe { libc::getenv(c"KVD_ALLOCATOR".as_ptr()) };
    // SAFETY: a non-null result of getenv is a NUL-terminated string.
    let system = !value.is_null() && unsafe { std::ffi::CStr::from_ptr(value) } == c"system";
    CHOICE.store(if system { SYSTEM } else { JEMALLOC }, Ordering::Relaxed);
    system
}

/// The allocator in use: `"jemalloc"` or `"system"`.
pub fn name() -> &'static str {
    if system() {
        "system"
    } else {
        "jemalloc"
    }
}

// SAFETY: every call is forwarded to one allocator, the same for the whole process (see
// `CHOICE`), which upholds GlobalAlloc's contract itself.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's guarantees are passed on unchanged.
        unsafe {
            if system() {
                System.alloc(layout)
            } else {
                Jemalloc.alloc(layout)
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for alloc.
        unsafe {
            if system() {
                System.alloc_zeroed(layout)
            } else {
                Jemalloc.alloc_zeroed(layout)
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from the same allocator (the choice never changes).
        unsafe {
            if system() {
                System.dealloc(ptr, layout)
            } else {
                Jemalloc.dealloc(ptr, layout)
            }
        }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for dealloc.
        unsafe {
            if system() {
                System.realloc(ptr, layout, new_size)
            } else {
                Jemalloc.realloc(ptr, layout, new_size)
            }
        }
    }
}

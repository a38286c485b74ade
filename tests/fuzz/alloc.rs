//! A counting global allocator for the fuzz harness: the bytes live now,
//! their high-water mark since the last reset, and a refusal of any single
//! request over [`REFUSE_OVER`] (a reader that trusts a claimed size would
//! otherwise get its 2⁴⁰-element buffer from the kernel's overcommit and
//! the fuzzer would never see it).

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};

/// No reader needs one buffer this large for the small fuzz inputs.
pub const REFUSE_OVER: usize = 1 << 30;

pub struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static LARGEST: AtomicUsize = AtomicUsize::new(0);

fn grew(size: usize) {
    let now = LIVE.fetch_add(size, Ordering::Relaxed) + size;
    PEAK.fetch_max(now, Ordering::Relaxed);
    LARGEST.fetch_max(size, Ordering::Relaxed);
}

fn refuse(size: usize) {
    let _ = std::io::stderr().write_all(
        b"\nfuzz: a single allocation over 1 GiB was requested; the input that did it is in the fuzz work folder named above\n",
    );
    // The backtrace allocates (small blocks, re-entering this allocator
    // below the limit): worth it, the process ends here anyway.
    eprintln!(
        "{size} bytes at\n{}",
        std::backtrace::Backtrace::force_capture()
    );
    std::process::abort();
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > REFUSE_OVER {
            refuse(layout.size());
        }
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > REFUSE_OVER {
            refuse(layout.size());
        }
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > REFUSE_OVER {
            refuse(new_size);
        }
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        p
    }
}

/// Starts a new measurement: returns the live bytes, which the peak and the
/// largest request are then measured above.
pub fn reset() -> usize {
    let now = LIVE.load(Ordering::Relaxed);
    PEAK.store(now, Ordering::Relaxed);
    LARGEST.store(0, Ordering::Relaxed);
    now
}

/// (peak live bytes, largest single request) since [`reset`].
pub fn since_reset() -> (usize, usize) {
    (
        PEAK.load(Ordering::Relaxed),
        LARGEST.load(Ordering::Relaxed),
    )
}

//! Ctrl-C (SIGINT) and SIGTERM stop a command the way a desktop app's
//! cancel button does: through the run's [`CancelToken`], so the staging
//! folder is deleted and nothing is left at the output path. A second
//! signal ends the process at once.

use llmq_gpu::CancelToken;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

static STOP: AtomicBool = AtomicBool::new(false);

/// Exit status of a run stopped by a signal (128 + SIGINT, as shells report).
pub const EXIT_INTERRUPTED: u8 = 130;

#[cfg(unix)]
extern "C" fn on_signal(_: libc::c_int) {
    // Only async-signal-safe work here: an atomic store, or _exit.
    if STOP.swap(true, Ordering::SeqCst) {
        unsafe { libc::_exit(EXIT_INTERRUPTED as libc::c_int) };
    }
}

/// A token cancelled when the process receives SIGINT or SIGTERM.
pub fn cancel_on_signals() -> CancelToken {
    let token = CancelToken::default();
    #[cfg(unix)]
    {
        let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        // SAFETY: the handler only touches an atomic and calls _exit.
        unsafe {
            libc::signal(libc::SIGINT, handler);
            libc::signal(libc::SIGTERM, handler);
        }
        let t = token.clone();
        std::thread::spawn(move || loop {
            if STOP.load(Ordering::SeqCst) {
                log::warn!("stopping at the next check (a second Ctrl-C stops at once)");
                t.cancel();
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        });
    }
    token
}

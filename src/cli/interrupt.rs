//! Ctrl-C (SIGINT) and SIGTERM stop a command the way a desktop app's
//! cancel button does: through the run's [`CancelToken`], so the staging
//! folder is deleted and nothing is left at the output path. Commands
//! without a token, and a second signal, delete the temporary outputs
//! being written and exit at once; a third ends the process as it is.

use llmq_gpu::CancelToken;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

static SIGNALS: AtomicUsize = AtomicUsize::new(0);

/// Exit status of a run stopped by a signal (128 + SIGINT, as shells report).
pub const EXIT_INTERRUPTED: u8 = 130;

#[cfg(unix)]
extern "C" fn on_signal(_: libc::c_int) {
    // Only async-signal-safe work here: an atomic add, or _exit.
    if SIGNALS.fetch_add(1, Ordering::SeqCst) >= 2 {
        unsafe { libc::_exit(EXIT_INTERRUPTED as libc::c_int) };
    }
}

/// Installs the handlers and the thread that acts on them: `token`, if
/// any, is cancelled at the first signal; without one, or at the second,
/// the temporary outputs are deleted and the process exits.
fn watch(token: Option<CancelToken>) {
    #[cfg(unix)]
    {
        let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        // SAFETY: the handler only touches an atomic and calls _exit.
        unsafe {
            libc::signal(libc::SIGINT, handler);
            libc::signal(libc::SIGTERM, handler);
        }
        std::thread::spawn(move || loop {
            let n = SIGNALS.load(Ordering::SeqCst);
            match &token {
                Some(t) if n == 1 && !t.is_cancelled() => {
                    log::warn!("stopping at the next check (a second Ctrl-C stops at once)");
                    t.cancel();
                }
                _ if n >= 2 || (n == 1 && token.is_none()) => {
                    let removed = llmq_gpu::formats::atomic::remove_pending();
                    eprintln!(
                        "stopped by a signal: {removed} partial output(s) deleted, nothing was kept"
                    );
                    std::process::exit(EXIT_INTERRUPTED.into());
                }
                _ => {}
            }
            std::thread::sleep(Duration::from_millis(50));
        });
    }
    #[cfg(not(unix))]
    let _ = token;
}

/// A token cancelled when the process receives SIGINT or SIGTERM.
pub fn cancel_on_signals() -> CancelToken {
    let token = CancelToken::default();
    watch(Some(token.clone()));
    token
}

/// For commands that cannot stop midway: a signal deletes the temporary
/// outputs being written and exits.
pub fn exit_on_signals() {
    watch(None);
}

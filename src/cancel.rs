//! [`CancelToken`]: how an in-process caller (a desktop app, a job) stops a
//! long run (quantize, eval, generate) at its next check.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Stops a run between tensors. Clones share the flag.
#[derive(Clone, Debug, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

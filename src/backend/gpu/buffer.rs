//! GPU buffers that count themselves, so a run can report its peak GPU memory.
//!
//! wgpu has no allocation statistics we can rely on across backends and
//! `wgpu::Buffer` has no drop hook, so every buffer the context creates is a
//! [`GpuBuffer`]: the wgpu buffer plus a handle on the context's counters,
//! which it adds its size to when created and subtracts when dropped. It
//! derefs to `wgpu::Buffer`, so `&buf`, `buf.slice(..)` and
//! `buf.as_entire_binding()` work unchanged.

use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Bytes of live buffers and their high-water mark, shared by a context and its buffers.
#[derive(Debug, Default)]
pub(crate) struct MemoryCounters {
    live: AtomicU64,
    peak: AtomicU64,
}

impl MemoryCounters {
    pub(crate) fn live(&self) -> u64 {
        self.live.load(Ordering::Relaxed)
    }

    pub(crate) fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }

    /// Restarts the high-water mark from the bytes live now.
    pub(crate) fn reset_peak(&self) {
        self.peak.store(self.live(), Ordering::Relaxed);
    }

    fn add(&self, bytes: u64) {
        let live = self.live.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak.fetch_max(live, Ordering::Relaxed);
    }

    fn sub(&self, bytes: u64) {
        self.live.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// A `wgpu::Buffer` counted in its context's live and peak GPU bytes.
///
/// The count drops when this handle does; wgpu may keep the memory a little
/// longer while queued work still uses it (e.g. a parameter uniform dropped
/// right after encoding), so the figures are a close lower bound.
#[derive(Debug)]
pub struct GpuBuffer {
    buffer: wgpu::Buffer,
    counters: Arc<MemoryCounters>,
}

impl GpuBuffer {
    pub(crate) fn new(buffer: wgpu::Buffer, counters: Arc<MemoryCounters>) -> Self {
        counters.add(buffer.size());
        Self { buffer, counters }
    }
}

impl Deref for GpuBuffer {
    type Target = wgpu::Buffer;

    fn deref(&self) -> &wgpu::Buffer {
        &self.buffer
    }
}

impl Drop for GpuBuffer {
    fn drop(&mut self) {
        self.counters.sub(self.buffer.size());
    }
}

//! One algorithm, two backends: the kernels every quantization method needs,
//! implemented on the CPU ([`cpu::CpuBackend`]) and in WGSL ([`gpu::GpuBackend`]).
//!
//! Algorithms (RTN now, GPTQ/GPTVQ later) are written once against [`Backend`].
//! Matrices are row-major `[rows, cols]` slices in PyTorch order: rows are
//! output channels, cols the input dimension along which groups run.

pub mod cpu;
pub mod gpu;

use crate::error::Result;
use crate::quant::packed::QuantizedTensor;

/// Per-group quantization parameters handed to [`Backend::quantize_codes`].
pub struct GroupParams<'a> {
    pub bits: u32,
    /// Weights per group along a row; the last group of a row may be shorter.
    pub group_len: usize,
    /// `rows * ceil(cols / group_len)` values of `1 / scale`.
    pub inv_scales: &'a [f32],
    /// `rows * ceil(cols / group_len)` zero-points.
    pub zeros: &'a [u32],
}

pub trait Backend: Send + Sync {
    /// Human-readable name, e.g. `cpu (rayon, 2 threads)` or `vulkan: llvmpipe`.
    fn name(&self) -> String;

    /// Minimum and maximum of each group of `group_len` weights of each row
    /// (the last group of a row may be shorter): two `rows * ceil(cols / group_len)` vectors.
    fn group_ranges(
        &self,
        w: &[f32],
        rows: usize,
        cols: usize,
        group_len: usize,
    ) -> Result<(Vec<f32>, Vec<f32>)>;

    /// Quantizes and packs `w` (see [`crate::quant::packed`] for the layout).
    fn quantize_codes(
        &self,
        w: &[f32],
        rows: usize,
        cols: usize,
        params: &GroupParams,
    ) -> Result<Vec<u32>>;

    /// Packs `rows * cols` codes of `bits` bits.
    fn pack(&self, codes: &[u32], rows: usize, cols: usize, bits: u32) -> Result<Vec<u32>>;

    /// Inverse of [`Backend::pack`].
    fn unpack(&self, packed: &[u32], rows: usize, cols: usize, bits: u32) -> Result<Vec<u32>>;

    /// `scale * (q - zero)` for every weight, row-major `[rows, cols]`.
    fn dequantize(&self, q: &QuantizedTensor) -> Result<Vec<f32>>;

    /// `y = x · Wᵀ` with `x` `[tokens, cols]` f32 and `W` the packed weight:
    /// returns `[tokens, rows]`. One token is a GEMV, more a GEMM.
    fn matmul(&self, q: &QuantizedTensor, x: &[f32], tokens: usize) -> Result<Vec<f32>>;
}

pub use cpu::CpuBackend;
pub use gpu::GpuBackend;

use crate::error::Error;
use gpu::{DeviceChoice, GpuContext};
use std::sync::Arc;

/// The backend `--device` asks for. `auto` takes a real GPU if there is one
/// and otherwise the CPU backend (software Vulkan would be slower), and logs
/// which it took. `max_binding` lowers the GPU binding limit (tests).
pub fn select(
    choice: DeviceChoice,
    adapter: Option<&str>,
    max_binding: Option<u64>,
) -> Result<Box<dyn Backend>> {
    if choice == DeviceChoice::Cpu {
        if adapter.is_some() {
            return Err(Error::Config(
                "--adapter picks a GPU; it cannot be used with --device cpu".into(),
            ));
        }
        return Ok(Box::new(CpuBackend));
    }
    match GpuContext::new(choice, adapter) {
        Ok(ctx) => {
            if let Some(b) = max_binding {
                ctx.set_max_binding(b);
            }
            log::info!("device: {}", ctx.adapter.short());
            Ok(Box::new(GpuBackend::new(Arc::new(ctx))))
        }
        Err(e) if choice == DeviceChoice::Auto && adapter.is_none() => {
            log::info!("device: no GPU adapter ({e}); using the CPU backend");
            Ok(Box::new(CpuBackend))
        }
        Err(e) => Err(e),
    }
}

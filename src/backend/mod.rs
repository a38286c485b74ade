//! One algorithm, two backends: the kernels every quantization method needs,
//! implemented on the CPU ([`cpu::CpuBackend`]) and in WGSL ([`gpu::GpuBackend`]).
//!
//! Algorithms (RTN, GPTQ; GPTVQ later) are written once against [`Backend`].
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

/// One block of GPTQ columns handed to [`Backend::gptq_block`].
pub struct GptqBlock<'a> {
    pub bits: u32,
    pub symmetric: bool,
    /// Weights per group along a row (the whole row for per-channel); the
    /// last group of a row may be shorter.
    pub group_len: usize,
    /// First and one-past-last column of the block.
    pub start: usize,
    pub end: usize,
    /// `Hinv[start..end, start..end]`, row-major `[len, len]`: the block's
    /// part of the upper Cholesky factor of H⁻¹.
    pub hinv: &'a [f32],
    /// Static groups (act-order): the group of each of the `cols` columns
    /// in the order they are quantized; the scales and zeros are set
    /// beforehand and never recomputed. `None`: column `j` is in group
    /// `j / group_len`, whose parameters are computed when `j` starts it.
    pub group_of: Option<&'a [u32]>,
}

impl GptqBlock<'_> {
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

/// What [`Backend::gptq_block`] writes: codes of the block's columns, the
/// parameters of every group whose first column lies in the block, and the
/// scaled errors the deferred update needs.
pub struct GptqBlockOut<'a> {
    /// `[rows, cols]` codes (only the block's columns are written).
    pub codes: &'a mut [u32],
    /// `[rows, groups]` scales and zero-points.
    pub scales: &'a mut [f32],
    pub zeros: &'a mut [u32],
    /// `[rows, len]`: `(w − q) / Hinv[j, j]` per column of the block.
    pub err: &'a mut [f32],
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

    /// Bytes of device buffers alive at once at the high-water mark since
    /// the last [`Backend::reset_memory_peak`]; `None` without device memory.
    fn memory_peak(&self) -> Option<u64> {
        None
    }

    /// Restarts [`Backend::memory_peak`] at what is alive now.
    fn reset_memory_peak(&self) {}

    /// The running Hessian of a linear layer's inputs (gptq.py `add_batch`):
    /// `h` `[cols, cols]` holds the mean over `n_seen` tokens so far; adding
    /// `x` `[tokens, cols]` gives `H ← H·n/(n+b) + (2/(n+b))·XᵀX`, `b = tokens`.
    fn hessian_update(
        &self,
        h: &mut [f32],
        cols: usize,
        n_seen: usize,
        x: &[f32],
        tokens: usize,
    ) -> Result<()>;

    /// GPTQ inside one block of columns, every row independently
    /// (gptq.py's inner loop): for each column `j` of the block, compute the
    /// group's scale/zero from the current weights of row `w[r]` when `j`
    /// starts a group, quantize with [`crate::quant::scheme::quantize_value`],
    /// and spread the error `(w − q)/Hinv[j, j]` over the rest of the block.
    /// `w` `[rows, cols]` is updated in place (block columns only).
    fn gptq_block(
        &self,
        w: &mut [f32],
        rows: usize,
        cols: usize,
        block: &GptqBlock,
        out: &mut GptqBlockOut,
    ) -> Result<()>;

    /// GPTQ's deferred update after a block ending at column `end`:
    /// `W[:, end..] −= Err · Hinv[block, end..]`, with `err` `[rows, len]`
    /// and `hinv_rest` `[len, cols − end]`.
    fn gptq_update_rest(
        &self,
        w: &mut [f32],
        rows: usize,
        cols: usize,
        end: usize,
        err: &[f32],
        hinv_rest: &[f32],
    ) -> Result<()>;

    /// The upper triangular `U` with `H⁻¹ = UᵀU` (gptq.py's cholesky,
    /// cholesky_inverse, cholesky upper), for an already damped symmetric
    /// `h` `[n, n]`: row-major f32 with zeros below the diagonal.
    /// `Ok(None)` when H is not positive definite (a non-positive or
    /// non-finite pivot), so the caller can raise the damping and retry.
    fn inverse_cholesky_upper(&self, h: &[f32], n: usize) -> Result<Option<Vec<f32>>>;

    /// `tr(A H Aᵀ)` for each `A` in `mats`, accumulated in f64, with `h`
    /// `[cols, cols]` symmetric and each `A` row-major `[len / cols, cols]`
    /// (the row counts may differ). GPTQ's error report: with `A = W − Ŵ`
    /// and `H` the Hessian of the inputs `X` it is `‖(W − Ŵ)Xᵀ‖²·2/n`.
    /// `h` is uploaded once per call, so pass every matrix of a linear at once.
    fn quadratic_traces(&self, h: &[f32], cols: usize, mats: &[&[f32]]) -> Result<Vec<f64>>;
}

/// Checks the shapes of a [`Backend::quadratic_traces`] call.
pub(crate) fn check_trace_args(h: &[f32], cols: usize, mats: &[&[f32]]) -> Result<()> {
    if cols == 0 || h.len() != cols * cols {
        return Err(Error::Config(format!(
            "quadratic traces: H has {} values for [{cols}, {cols}] (need {} and cols > 0)",
            h.len(),
            cols * cols
        )));
    }
    if let Some((i, a)) = mats.iter().enumerate().find(|(_, a)| a.len() % cols != 0) {
        return Err(Error::Config(format!(
            "quadratic traces: matrix {i} has {} values, not a whole number of rows of {cols}",
            a.len()
        )));
    }
    Ok(())
}

/// Checks the shapes of a [`Backend::hessian_update`] call.
pub(crate) fn check_hessian_args(h: &[f32], cols: usize, x: &[f32], tokens: usize) -> Result<()> {
    if cols == 0 || h.len() != cols * cols || x.len() != tokens * cols {
        return Err(Error::Config(format!(
            "Hessian update: H has {} values and X {} for {cols} columns and {tokens} tokens \
             (need {} and {})",
            h.len(),
            x.len(),
            cols * cols,
            tokens * cols
        )));
    }
    Ok(())
}

/// Checks the shapes of a [`Backend::gptq_block`] call.
pub(crate) fn check_gptq_block_args(
    w: &[f32],
    rows: usize,
    cols: usize,
    b: &GptqBlock,
    out: &GptqBlockOut,
) -> Result<()> {
    let groups = cols.div_ceil(b.group_len.max(1));
    let ok = b.group_len > 0
        && b.start < b.end
        && b.end <= cols
        && w.len() == rows * cols
        && b.hinv.len() == b.len() * b.len()
        && out.codes.len() == rows * cols
        && out.scales.len() == rows * groups
        && out.zeros.len() == rows * groups
        && out.err.len() == rows * b.len()
        && (2..=8).contains(&b.bits)
        && b.group_of
            .is_none_or(|g| g.len() == cols && g.iter().all(|&i| (i as usize) < groups));
    if !ok {
        return Err(Error::Config(format!(
            "GPTQ block {}..{} of a [{rows}, {cols}] weight: inconsistent buffer sizes or settings",
            b.start, b.end
        )));
    }
    Ok(())
}

/// Checks the shapes of a [`Backend::gptq_update_rest`] call.
pub(crate) fn check_gptq_rest_args(
    w: &[f32],
    rows: usize,
    cols: usize,
    end: usize,
    err: &[f32],
    hinv_rest: &[f32],
) -> Result<()> {
    let len = err.len().checked_div(rows).unwrap_or(0);
    if w.len() != rows * cols
        || end > cols
        || err.len() != rows * len
        || hinv_rest.len() != len * (cols - end)
    {
        return Err(Error::Config(format!(
            "GPTQ update after column {end} of a [{rows}, {cols}] weight: inconsistent buffer sizes"
        )));
    }
    Ok(())
}

/// Checks the shapes of a [`Backend::inverse_cholesky_upper`] call.
pub(crate) fn check_cholesky_args(h: &[f32], n: usize) -> Result<()> {
    if n == 0 || h.len() != n * n {
        return Err(Error::Config(format!(
            "inverse Cholesky: H has {} values for [{n}, {n}] (need {} and n > 0)",
            h.len(),
            n * n
        )));
    }
    Ok(())
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

//! One algorithm, two backends: the kernels every quantization method needs,
//! implemented on the CPU ([`cpu::CpuBackend`]) and in WGSL ([`gpu::GpuBackend`]).
//!
//! Algorithms (RTN, GPTQ; GPTVQ later) are written once against [`Backend`].
//! Matrices are row-major `[rows, cols]` slices in PyTorch order: rows are
//! output channels, cols the input dimension along which groups run.

pub mod cpu;
pub mod gpu;

use crate::backend::cpu::ops::AttnShape;
use crate::encoding::{EncodedTensor, Grid, GridCodes, QuantizedTensor, VqTensor};
use crate::error::Result;

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

/// What GPTQ's column loop needs besides the weight, fixed for one weight
/// by [`Backend::gptq_columns`].
#[derive(Clone, Copy)]
pub struct GptqSpec<'a> {
    /// The grid weights are rounded onto ([`crate::encoding::grid`]).
    pub grid: &'a dyn Grid,
    /// Weights per group along a row (the whole row for per-channel); the
    /// last group of a row may be shorter.
    pub group_len: usize,
    /// Columns per block: block `b` is `b·block .. min((b+1)·block, cols)`.
    pub block: usize,
    /// `[cols, cols]` row-major upper Cholesky factor of H⁻¹, in the order
    /// the columns are quantized.
    pub hinv: &'a [f32],
    /// `[cols]` `diag(H)` in the order the columns are quantized (what a
    /// grid may weight its fit by).
    pub hdiag: &'a [f32],
    /// With act-order, `perm[k]` is the original index of the k-th column
    /// quantized; the codes come back packed in the original order.
    pub perm: Option<&'a [u32]>,
    /// Act-order's static groups, `None` for GPTQ's dynamic groups (column
    /// `j` is in group `j / group_len`, whose parameters the grid fits from
    /// the current weights when `j` starts it).
    pub static_groups: Option<StaticGroups<'a>>,
}

/// Groups fixed before GPTQ starts (act-order): the group of each column in
/// quantization order and every group's grid parameters, never refitted.
#[derive(Clone, Copy)]
pub struct StaticGroups<'a> {
    /// `[cols]` group of each column.
    pub group_of: &'a [u32],
    /// `[rows, groups, params_per_group]`.
    pub params: &'a [f32],
}

impl GptqSpec<'_> {
    pub fn groups(&self, cols: usize) -> usize {
        cols.div_ceil(self.group_len.max(1))
    }

    /// Rows `rows` and columns `span` of H⁻¹'s factor of a `cols`-column
    /// weight, row-major `[rows.len(), span.len()]`: a block's
    /// `Hinv[block, block]` or (part of) its `Hinv[block, end..]`.
    pub(crate) fn hinv_part(
        &self,
        cols: usize,
        rows: std::ops::Range<usize>,
        span: std::ops::Range<usize>,
    ) -> Vec<f32> {
        rows.flat_map(|i| &self.hinv[i * cols + span.start..i * cols + span.end])
            .copied()
            .collect()
    }

    /// Columns of block `start..` (checked against the spec's block size).
    pub(crate) fn block_end(&self, cols: usize, start: usize) -> Result<usize> {
        if self.block == 0 || !start.is_multiple_of(self.block) || start >= cols {
            return Err(Error::Config(format!(
                "GPTQ block starting at column {start} of {cols}: not a block of {} columns",
                self.block
            )));
        }
        Ok((start + self.block).min(cols))
    }
}

/// The running Hessian of one linear layer's inputs (gptq.py `add_batch`),
/// held where the backend keeps it (host memory, GPU buffers) between
/// batches, so only the inputs travel.
pub trait ResidentHessian {
    /// Adds `x` `[tokens, cols]`: with `n` tokens seen so far and
    /// `b = tokens`, `H ← H·n/(n+b) + (2/(n+b))·XᵀX` (H stays the mean).
    fn add(&mut self, x: &[f32], tokens: usize) -> Result<()>;

    /// Waits for the device and returns H `[cols, cols]`, symmetric.
    fn finish(self: Box<Self>) -> Result<Vec<f32>>;
}

/// One weight under GPTQ, held where the backend keeps it (host memory,
/// GPU buffers) from the first block to the last, so nothing travels
/// between blocks. `quant::gptq` drives it block by block.
pub trait GptqColumns {
    /// Quantizes the block of columns starting at `start`, every row
    /// independently (gptq.py's inner loop): for each column `j`, the
    /// group's scale/zero come from the row's current weights when `j`
    /// starts a group (dynamic groups); `q` by
    /// [`crate::encoding::affine::scheme::quantize_value`]; the error
    /// `(w − q)/Hinv[j, j]` is kept and spread over the rest of the block.
    fn quantize_block(&mut self, start: usize) -> Result<()>;

    /// GPTQ's deferred update after the block starting at `start` (ending
    /// at `end`): `W[:, end..] −= Err · Hinv[block, end..]`.
    fn update_rest(&mut self, start: usize) -> Result<()>;

    /// The current (error-corrected) weights of the columns `span` of
    /// every row, `[rows, span.len()]`: what a grid whose groups span many
    /// rows ([`Grid::fits_rows`] false) is fitted to.
    fn current_columns(&self, span: std::ops::Range<usize>) -> Result<Vec<f32>>;

    /// Sets the parameters of group `group` (a group of columns) for every
    /// set of rows sharing them ([`Grid::rows_per_params`]): `params` holds
    /// `ceil(rows / rows_per_params) · params_per_group` values.
    fn set_group_params(&mut self, group: usize, params: &[f32]) -> Result<()>;

    /// Waits for the device and returns the codes, packed (on the device)
    /// in the original column order, and the group parameters. A grid of
    /// step `d` has one code per vector: `cols / d` per row.
    fn finish(self: Box<Self>) -> Result<GridCodes>;
}

/// The normal-equation operator of GPTVQ's codebook update for one VQ
/// weight's fixed assignments `P` and Hessian `H`, held where the backend
/// computes (GPU: the indices and H uploaded once). Reference:
/// [`crate::encoding::vq::assignment::Assignment`] with an SGEMM.
pub trait CodebookSystem {
    /// `Pᵀ(P c · H)` for the codebook values `c` (`[codebooks, k · d]`).
    fn apply(&mut self, c: &[f32]) -> Result<Vec<f64>>;

    /// `Pᵀ(W · H)` for a `[rows, cols]` `w`.
    fn apply_dense(&mut self, w: &[f32]) -> Result<Vec<f64>>;

    /// `Pᵀ g` for a `[rows, cols]` `g`.
    fn gather(&mut self, g: &[f32]) -> Result<Vec<f64>>;

    /// The diagonal of `Pᵀ (· diag(H)) P`, the Jacobi preconditioner, for
    /// `hdiag` = diag(H) and `rows` rows: `Pᵀ` of diag(H) on every row.
    fn jacobi(&mut self, hdiag: &[f32], rows: usize) -> Result<Vec<f64>> {
        let cols = hdiag.len();
        let tiled: Vec<f32> = (0..rows * cols).map(|k| hdiag[k % cols]).collect();
        self.gather(&tiled)
    }
}

/// A quantized linear held where the backend computes (GPU buffers), for
/// `x · Wᵀ` on many batches of activations with one upload.
pub trait ResidentLinear {
    /// `[rows, cols]` of W.
    fn shape(&self) -> [usize; 2];

    /// `y = x · Wᵀ` for `x` `[tokens, cols]`: returns `[tokens, rows]`.
    fn apply(&self, x: &[f32], tokens: usize) -> Result<Vec<f32>>;
}

/// [`ResidentLinear`] of a backend whose weights are already where it
/// computes (the CPU): every call is [`Backend::matmul`] (VQ weights: their
/// CPU kernel).
struct HostLinear<'a, B: Backend + ?Sized> {
    backend: &'a B,
    q: &'a EncodedTensor,
}

impl<B: Backend + ?Sized> ResidentLinear for HostLinear<'_, B> {
    fn shape(&self) -> [usize; 2] {
        [self.q.rows(), self.q.cols()]
    }

    fn apply(&self, x: &[f32], tokens: usize) -> Result<Vec<f32>> {
        match self.q {
            EncodedTensor::Affine(q) => self.backend.matmul(q, x, tokens),
            EncodedTensor::Vq(v) => v.matmul(x, tokens),
            EncodedTensor::Ggml(g) => g.matmul(x, tokens),
        }
    }
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

    /// Quantizes and packs `w` (see [`crate::encoding::affine::packing`] for the layout).
    fn quantize_codes(
        &self,
        w: &[f32],
        rows: usize,
        cols: usize,
        params: &GroupParams,
    ) -> Result<Vec<u32>>;

    /// Histogram of `|x|` for range calibration ([`crate::quant::range`]):
    /// `bins` counts of `min(⌊|x|·inv_width⌋, bins − 1)`, the product in
    /// f32 so that every backend bins alike.
    fn abs_histogram(&self, x: &[f32], bins: usize, inv_width: f32) -> Result<Vec<u32>>;

    /// Packs `rows * cols` codes of `bits` bits.
    fn pack(&self, codes: &[u32], rows: usize, cols: usize, bits: u32) -> Result<Vec<u32>>;

    /// Inverse of [`Backend::pack`].
    fn unpack(&self, packed: &[u32], rows: usize, cols: usize, bits: u32) -> Result<Vec<u32>>;

    /// `scale * (q - zero)` for every weight, row-major `[rows, cols]`.
    fn dequantize(&self, q: &QuantizedTensor) -> Result<Vec<f32>>;

    /// `y = x · Wᵀ` with `x` `[tokens, cols]` f32 and `W` the packed weight:
    /// returns `[tokens, rows]`. One token is a GEMV, more a GEMM.
    fn matmul(&self, q: &QuantizedTensor, x: &[f32], tokens: usize) -> Result<Vec<f32>>;

    /// `q` kept on the backend for repeated [`ResidentLinear::apply`] (GPTQ's
    /// calibration forward runs each quantized linear on every chunk of
    /// windows). The default holds `q` in host memory and calls
    /// [`Backend::matmul`].
    fn resident_linear<'a>(&'a self, q: &'a EncodedTensor) -> Result<Box<dyn ResidentLinear + 'a>> {
        Ok(Box::new(HostLinear { backend: self, q }))
    }

    /// Causal grouped-query attention over `windows` independent windows of
    /// `seq` tokens each (positions 0..seq, rotary embedding already
    /// applied): `q` `[windows·seq, heads·hd]`, `k` and `v`
    /// `[windows·seq, kv_heads·hd]`; returns `[windows·seq, heads·hd]`.
    fn causal_attention(
        &self,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        windows: usize,
        seq: usize,
        shape: AttnShape,
    ) -> Result<Vec<f32>>;

    /// Weighted EM iterations of `groups` VQ codebooks at once (GPTVQ's
    /// codebook fit; the reference is [`crate::encoding::vq::em::iterate`]):
    /// `points` `[groups, n, d]`, their importance `weights` `[groups, n,
    /// d]`, `centroids` `[groups, k, d]` updated in
    /// place, `d` = `centroids.len() / (groups · k)`. Stops after `iters`
    /// iterations or when no assignment changed; returns the iterations run.
    fn vq_em(
        &self,
        points: &[f32],
        weights: &[f32],
        groups: usize,
        k: usize,
        iters: usize,
        centroids: &mut [f32],
    ) -> Result<usize>;

    /// GPTVQ's codebook-update operator for the assignments of `t` and the
    /// `[cols, cols]` symmetric `h`; see [`CodebookSystem`].
    fn vq_codebook_system<'a>(
        &'a self,
        t: &'a VqTensor,
        h: &'a [f32],
    ) -> Result<Box<dyn CodebookSystem + 'a>>;

    /// Bytes of device buffers alive at once at the high-water mark since
    /// the last [`Backend::reset_memory_peak`]; `None` without device memory.
    fn memory_peak(&self) -> Option<u64> {
        None
    }

    /// Restarts [`Backend::memory_peak`] at what is alive now.
    fn reset_memory_peak(&self) {}

    /// Bytes copied host → device and device → host so far; `None`
    /// without a device.
    fn transfer_bytes(&self) -> Option<(u64, u64)> {
        None
    }

    /// Continues the running Hessian `h` `[cols, cols]` of `n_seen` tokens
    /// of a linear layer's inputs (`h` all zeros and `n_seen` 0 to start
    /// one), kept where the backend keeps it until
    /// [`ResidentHessian::finish`]; see [`ResidentHessian::add`].
    fn resident_hessian<'a>(
        &'a self,
        h: Vec<f32>,
        cols: usize,
        n_seen: usize,
    ) -> Result<Box<dyn ResidentHessian + 'a>>;

    /// Starts GPTQ on the `[rows, cols]` weight `w` (dead columns already
    /// zeroed, columns already in quantization order); see [`GptqColumns`].
    fn gptq_columns<'a>(
        &'a self,
        w: Vec<f32>,
        rows: usize,
        cols: usize,
        spec: GptqSpec<'a>,
    ) -> Result<Box<dyn GptqColumns + 'a>>;

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

/// Checks the shapes of a [`Backend::causal_attention`] call.
pub(crate) fn check_attention_args(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    windows: usize,
    seq: usize,
    s: AttnShape,
) -> Result<()> {
    let (qw, kvw) = (s.heads * s.head_dim, s.kv_heads * s.head_dim);
    let ok = s.heads > 0
        && s.kv_heads > 0
        && s.head_dim > 0
        && s.heads.is_multiple_of(s.kv_heads)
        && q.len() == windows * seq * qw
        && k.len() == windows * seq * kvw
        && v.len() == k.len();
    if !ok {
        return Err(Error::Config(format!(
            "attention over {windows} windows of {seq} tokens with {s:?}: q/k/v have {}/{}/{} \
             values (need {}/{}/{}, heads a multiple of kv heads)",
            q.len(),
            k.len(),
            v.len(),
            windows * seq * qw,
            windows * seq * kvw,
            windows * seq * kvw
        )));
    }
    Ok(())
}

/// Checks the shapes of a [`Backend::resident_hessian`] call.
pub(crate) fn check_hessian_start(h: &[f32], cols: usize) -> Result<()> {
    if cols == 0 || h.len() != cols * cols {
        return Err(Error::Config(format!(
            "Hessian of {cols} columns given {} values (need {} and cols > 0)",
            h.len(),
            cols * cols
        )));
    }
    Ok(())
}

/// Checks the shape of a [`ResidentHessian::add`] call.
pub(crate) fn check_hessian_batch(cols: usize, x: &[f32], tokens: usize) -> Result<()> {
    if x.len() != tokens * cols {
        return Err(Error::Config(format!(
            "Hessian update: X has {} values for {tokens} tokens of {cols} columns (need {})",
            x.len(),
            tokens * cols
        )));
    }
    Ok(())
}

/// Checks the shapes of a [`Backend::gptq_columns`] call.
pub(crate) fn check_gptq_args(w: &[f32], rows: usize, cols: usize, spec: &GptqSpec) -> Result<()> {
    let groups = spec.groups(cols);
    let per_group = spec.grid.params_per_group();
    let is_perm = |p: &[u32]| {
        let mut seen = vec![false; cols];
        p.len() == cols
            && p.iter()
                .all(|&c| (c as usize) < cols && !std::mem::replace(&mut seen[c as usize], true))
    };
    let ok = spec.group_len > 0
        && spec.block > 0
        && cols > 0
        && w.len() == rows * cols
        && spec.hinv.len() == cols * cols
        && spec.hdiag.len() == cols
        && (1..=8).contains(&spec.grid.code_bits())
        && per_group > 0
        && spec.perm.is_none_or(is_perm)
        && spec.static_groups.is_none_or(|s| {
            spec.grid.rows_per_params() == 1
                && s.group_of.len() == cols
                && s.group_of.iter().all(|&g| (g as usize) < groups)
                && s.params.len() == rows * groups * per_group
        })
        && spec.grid.rows_per_params() > 0
        && (spec.grid.step() == 1
            || (spec.perm.is_none() && cols.is_multiple_of(spec.grid.step())))
        && (spec.block.is_multiple_of(spec.grid.step()));
    if !ok {
        return Err(Error::Config(format!(
            "GPTQ of a [{rows}, {cols}] weight ({} values, H⁻¹ factor {} values, diag(H) {} \
             values): inconsistent buffer sizes or settings (grid {}, group {}, block {})",
            w.len(),
            spec.hinv.len(),
            spec.hdiag.len(),
            spec.grid.key(),
            spec.group_len,
            spec.block
        )));
    }
    Ok(())
}

/// Checks a [`Backend::vq_codebook_system`] call.
pub(crate) fn check_codebook_system_args(t: &VqTensor, h: &[f32]) -> Result<()> {
    t.validate("codebook update")?;
    if h.len() != t.cols * t.cols {
        return Err(Error::Config(format!(
            "codebook update: H has {} values for a weight of {} columns (need {})",
            h.len(),
            t.cols,
            t.cols * t.cols
        )));
    }
    Ok(())
}

/// Checks the shapes of a [`Backend::vq_em`] call; returns `d`.
pub(crate) fn check_vq_em_args(
    points: &[f32],
    weights: &[f32],
    groups: usize,
    k: usize,
    centroids: &[f32],
) -> Result<usize> {
    let d = centroids.len() / (groups * k).max(1);
    let n = weights.len() / (groups * d).max(1);
    let ok = groups > 0
        && k > 0
        && (1..=4).contains(&d)
        && centroids.len() == groups * k * d
        && weights.len() == groups * n * d
        && n > 0
        && points.len() == groups * n * d;
    if !ok {
        return Err(Error::Config(format!(
            "EM of {groups} codebooks of {k} centroids: {} centroid values, {} weights and {} \
             point values do not fit [groups, k, d], [groups, n, d] and [groups, n, d] with d \
             in 1..=4",
            centroids.len(),
            weights.len(),
            points.len()
        )));
    }
    Ok(d)
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

//! GPTQ (Frantar et al., arXiv 2210.17323), written once over [`Backend`]
//! and kept as close as possible to IST-DASLab/gptq's `gptq.py`:
//!
//! - [`Hessian::add_batch`] is `add_batch`: the running mean
//!   `H = 2/n · Σ x xᵀ` over the calibration tokens of one linear's input;
//! - [`quantize`] is `fasterquant`: dead inputs, damping (raised
//!   automatically when Cholesky fails), the upper Cholesky factor of H⁻¹,
//!   then 128-column blocks quantized column by column with error feedback
//!   and a deferred update of the remaining columns.
//!
//! The heavy parts are backend kernels: [`Backend::resident_hessian`], the
//! factor of H⁻¹ ([`Backend::inverse_cholesky_upper`]: f64 `faer` on the
//! CPU, blocked f32 WGSL on the GPU), the column loop over a weight the
//! backend keeps resident ([`Backend::gptq_columns`]: one block with rows
//! in parallel, then the deferred GEMM of the later columns) and the error
//! report's traces `tr(ΔW H ΔWᵀ)` ([`Backend::quadratic_traces`]).
//!
//! Groups: by default GPTQ's dynamic groups (`static_groups=False`): the
//! scale and zero of a group come from the current, already updated
//! weights when the group's first column is reached. With act-order
//! (`actorder=True, static_groups=True`) the columns are quantized in
//! order of decreasing `diag(H)` and every group's parameters are fixed
//! beforehand from the original weights (so they equal RTN's), which keeps
//! `g_idx = j / group_size`: the codes are stored in the original column
//! order and inference needs no gather; the permutation is reported.
//! The column loop rounds onto any [`Grid`] ([`quantize_on_grid`]); for
//! linear integer codes ([`quantize`], [`quantize_factored`]) that is the
//! [`AffineGrid`], whose parameters and codes are exactly RTN's, and the
//! result is a [`QuantizedTensor`] in the usual packed layout, so the
//! writers and the packed forward take it unchanged. Not supported:
//! per-tensor granularity.
//!
//! Files: [`hessian`] (accumulating H), [`factor`] (dead inputs,
//! act-order, damped H⁻¹ factor), this file (the column loop and its
//! report), [`error`] (output errors from H or from the inputs, FLOPs).

pub mod error;
pub mod factor;
pub mod hessian;

pub use error::{flops, relative_to};
pub use factor::{factor, Factored};
pub use hessian::{Hessian, HessianAccumulation};

use crate::backend::{Backend, GptqSpec, StaticGroups};
use crate::encoding::affine::scheme::{Granularity, QuantScheme};
use crate::encoding::{AffineGrid, Grid, GridCodes, QuantizedTensor};
use crate::error::{Error, Result};
use crate::quant::rtn::check_finite;
use error::diff;
use rayon::prelude::*;
use serde::Serialize;
use std::time::Instant;

/// GPTQ settings (gptq.py's `fasterquant` arguments).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GptqOptions {
    /// Damping as a fraction of the mean diagonal of H (`percdamp`).
    pub damp: f64,
    /// Columns per block (`blocksize`).
    pub block: usize,
    /// How many times the damping may be raised when Cholesky fails.
    pub max_damp_retries: u32,
    /// Quantize columns in order of decreasing `diag(H)` (`actorder` /
    /// GPTQModel's `desc_act`), with static groups so the output needs no
    /// reordering at inference. On by default: it roughly halved what plain
    /// GPTQ lost on SmolLM2 at every setting measured (README).
    pub act_order: bool,
    /// Fit each group's scale and zero-point by the `diag(H)`-weighted
    /// scale search ([`crate::encoding::affine::search`]) instead of its
    /// range, for static and dynamic groups alike.
    pub scale_search: bool,
    /// Clip each group's range at this calibrator's threshold instead
    /// (`--clip percentile|kl`, [`crate::encoding::affine::clip`]; groups
    /// fitted on the host at each block on either backend).
    pub clip: Option<crate::quant::range::RangeCalibrator>,
    /// `λ` of `H ← (1−λ)·H + λ·diag(H)` before factoring: 0 is GPTQ, 1
    /// ignores the input correlations (each column weighted by its `Σx²`
    /// alone, as llama.cpp's importance matrix). The error report still
    /// scores the result on the unblended H.
    pub diag_blend: f64,
}

impl GptqOptions {
    /// How groups choose their range: [`GptqOptions::clip`], else the
    /// scale search or the range.
    pub fn weight_clip(&self) -> crate::encoding::affine::clip::WeightClip {
        use crate::encoding::affine::clip::WeightClip;
        match (self.clip, self.scale_search) {
            (Some(c), _) => WeightClip::Threshold(c),
            (None, true) => WeightClip::Mse,
            (None, false) => WeightClip::MinMax,
        }
    }

    /// Options whose groups choose their range by `clip`.
    pub fn with_clip(mut self, clip: crate::encoding::affine::clip::WeightClip) -> Self {
        use crate::encoding::affine::clip::WeightClip;
        self.scale_search = clip == WeightClip::Mse;
        self.clip = match clip {
            WeightClip::Threshold(c) => Some(c),
            _ => None,
        };
        self
    }
    /// `λ` of [`GptqOptions::diag_blend`] in [`GptqOptions::recommended`].
    pub const RECOMMENDED_DIAG_BLEND: f64 = 0.5;

    /// What the pipeline and the command line use: act-order, groups fitted
    /// by the weighted scale search, and H blended halfway to its diagonal.
    /// Chosen on text of other domains than the calibration text (README,
    /// "Out of domain"); [`GptqOptions::default`] is gptq.py's GPTQ with
    /// act-order.
    pub fn recommended() -> Self {
        Self {
            scale_search: true,
            diag_blend: Self::RECOMMENDED_DIAG_BLEND,
            ..Self::default()
        }
    }
}

impl Default for GptqOptions {
    fn default() -> Self {
        Self {
            damp: 0.01,
            block: 128,
            max_damp_retries: 16,
            act_order: true,
            scale_search: false,
            clip: None,
            diag_blend: 0.0,
        }
    }
}

/// What happened while quantizing one linear.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GptqReport {
    /// Damping asked for and damping used (fractions of the mean diagonal).
    pub damp_requested: f64,
    pub damp_used: f64,
    /// Times Cholesky failed and the damping was raised.
    pub damp_retries: u32,
    /// Inputs that were always zero (`H[i, i] == 0`); their weights are zeroed.
    pub dead_columns: usize,
    /// `tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)`: the relative output error
    /// ‖WX − ŴX‖²/‖WX‖² on the calibration inputs, computed from H.
    pub proxy_error: f64,
    /// `tr(W H Wᵀ)`, the denominator of `proxy_error` (so other
    /// quantizations of the same weight can be scored against it).
    pub output_energy: f64,
    /// `proxy_error` of each baseline handed to [`quantize_factored`]
    /// (e.g. RTN), in order; empty from [`quantize`].
    pub baseline_errors: Vec<f64>,
    /// With act-order, the order the columns were quantized in:
    /// `perm[k]` is the original index of the k-th column quantized.
    pub perm: Option<Vec<u32>>,
    /// Seconds spent on damping + Cholesky + inverse
    /// ([`Backend::inverse_cholesky_upper`]), on the
    /// blocked column updates (backend kernels and packing), and on
    /// measuring `proxy_error` and `baseline_errors`
    /// ([`Backend::quadratic_traces`]).
    pub seconds_factor: f64,
    pub seconds_update: f64,
    pub seconds_error: f64,
}

/// Quantizes the `[rows, cols]` weight `w` of the linear `name` with GPTQ,
/// given the Hessian `h` `[cols, cols]` of its inputs.
#[allow(clippy::too_many_arguments)]
pub fn quantize(
    backend: &dyn Backend,
    name: &str,
    w: &[f32],
    rows: usize,
    cols: usize,
    h: &[f32],
    scheme: &QuantScheme,
    opts: &GptqOptions,
) -> Result<(QuantizedTensor, GptqReport)> {
    check_args(name, w, rows, cols, h, scheme)?;
    let f = factor(backend, name, h, cols, opts)?;
    quantize_factored(backend, name, w, rows, cols, h, &f, scheme, opts, &[])
}

/// A `[rows, cols]` weight under GPTQ with the Hessian `h` of its inputs,
/// its shapes checked and its values finite.
#[derive(Clone, Copy)]
pub struct Weight<'a> {
    pub name: &'a str,
    pub w: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub h: &'a [f32],
}

impl<'a> Weight<'a> {
    pub fn new(
        name: &'a str,
        w: &'a [f32],
        rows: usize,
        cols: usize,
        h: &'a [f32],
    ) -> Result<Self> {
        if rows == 0 || cols == 0 || w.len() != rows * cols || h.len() != cols * cols {
            return Err(Error::BadTensor {
                name: name.into(),
                msg: format!(
                    "{} weights and {} Hessian values for shape [{rows}, {cols}] (need {} and {}, \
                     both dimensions positive)",
                    w.len(),
                    h.len(),
                    rows * cols,
                    cols * cols
                ),
            });
        }
        check_finite(name, w)?;
        Ok(Self {
            name,
            w,
            rows,
            cols,
            h,
        })
    }
}

fn check_args(
    name: &str,
    w: &[f32],
    rows: usize,
    cols: usize,
    h: &[f32],
    scheme: &QuantScheme,
) -> Result<()> {
    scheme.check_shape(name, rows, cols)?;
    if scheme.granularity == Granularity::PerTensor {
        return Err(Error::Config(format!(
            "GPTQ of '{name}': per-tensor quantization is not supported; use groups or per-channel"
        )));
    }
    Weight::new(name, w, rows, cols, h).map(|_| ())
}

/// [`quantize`] with the Hessian already factored by [`factor`] (`h` is
/// still needed for the error report). `baselines` are other
/// quantizations Ŵ of the same weight (`[rows, cols]` each, e.g. RTN's)
/// scored in the same [`Backend::quadratic_traces`] call as GPTQ's; their
/// relative errors are [`GptqReport::baseline_errors`].
#[allow(clippy::too_many_arguments)]
pub fn quantize_factored(
    backend: &dyn Backend,
    name: &str,
    w: &[f32],
    rows: usize,
    cols: usize,
    h: &[f32],
    f: &Factored,
    scheme: &QuantScheme,
    opts: &GptqOptions,
    baselines: &[&[f32]],
) -> Result<(QuantizedTensor, GptqReport)> {
    check_args(name, w, rows, cols, h, scheme)?;
    let weight = Weight {
        name,
        w,
        rows,
        cols,
        h,
    };
    let t_update = Instant::now();
    let grid = AffineGrid {
        clip: opts.clip,
        ..AffineGrid::searched(scheme, opts.scale_search)
    };
    let codes = quantize_on_grid(backend, &weight, f, &grid, scheme.group_len(cols), opts)?;
    let q = grid.tensor(scheme, rows, cols, codes)?;
    let seconds_update = t_update.elapsed().as_secs_f64();
    let t_error = Instant::now();
    let w_hat = backend.dequantize(&q)?;
    let mut report = error_report(backend, &weight, f, &w_hat, baselines)?;
    report.seconds_update = seconds_update;
    report.seconds_error = t_error.elapsed().as_secs_f64();
    Ok((q, report))
}

/// GPTQ of `weight` onto `grid` with groups of `group_len` columns, given
/// its factored Hessian: gptq.py's `fasterquant` after the factorisation.
pub fn quantize_on_grid(
    backend: &dyn Backend,
    weight: &Weight,
    f: &Factored,
    grid: &dyn Grid,
    group_len: usize,
    opts: &GptqOptions,
) -> Result<GridCodes> {
    let (name, rows, cols) = (weight.name, weight.rows, weight.cols);
    if f.cols != cols || f.perm.is_some() != opts.act_order || group_len == 0 {
        return Err(Error::Config(format!(
            "GPTQ of '{name}': the factored Hessian is for {} columns{}, the weight has {cols} \
             (groups of {group_len})",
            f.cols,
            if f.perm.is_some() {
                " with act-order"
            } else {
                ""
            }
        )));
    }
    let w = without_dead_inputs(weight.w, cols, &f.dead);
    let hdiag: Vec<f32> = (0..cols).map(|i| weight.h[i * cols + i]).collect();
    let perm: Option<Vec<u32>> = f
        .perm
        .as_ref()
        .map(|p| p.iter().map(|&c| c as u32).collect());
    // Act-order: every group's parameters fitted once to the weights as
    // they are now, then the columns (and diag(H)) in the factor's order.
    // Host-fitted grids take static groups in natural order too, refitted
    // below as the loop reaches them.
    let host_fit = grid.host_fit_groups();
    let (w, hdiag, fixed) = match &f.perm {
        None if host_fit.is_some() => {
            let params = fit_groups(grid, &w, cols, &hdiag, group_len);
            let group_of: Vec<u32> = (0..cols).map(|c| (c / group_len) as u32).collect();
            (w, hdiag, Some((group_of, params)))
        }
        None => (w, hdiag, None),
        Some(order) => {
            let params = fit_groups(grid, &w, cols, &hdiag, group_len);
            let group_of: Vec<u32> = order.iter().map(|&c| (c / group_len) as u32).collect();
            let hdiag = order.iter().map(|&c| hdiag[c]).collect();
            (
                permute_columns(&w, cols, order),
                hdiag,
                Some((group_of, params)),
            )
        }
    };
    let spec = GptqSpec {
        grid,
        group_len,
        block: opts.block,
        hinv: &f.hinv,
        hdiag: &hdiag,
        perm: perm.as_deref(),
        static_groups: fixed
            .as_ref()
            .map(|(group_of, params)| StaticGroups { group_of, params }),
    };
    // Blocks of columns: quantize inside the block with error feedback,
    // then apply the block's errors to every later column at once.
    let mut state = backend.gptq_columns(w, rows, cols, spec)?;
    for start in (0..cols).step_by(opts.block) {
        if let (Some(n), None) = (host_fit, &f.perm) {
            refit_spans(
                &mut *state,
                grid,
                (rows, cols),
                &hdiag,
                (group_len, n),
                start,
                opts,
            )?;
        }
        state.quantize_block(start)?;
        if start + opts.block < cols {
            state.update_rest(start)?;
        }
    }
    state.finish()
}

/// GPTQ's dynamic groups for a host-fitted grid: the spans (`groups`
/// groups of `group_len` columns, fitted together) that start in the block at `start` are
/// refitted to the current weights, which hold every earlier block's
/// error (as gptq.py fits a group from `W` at the block's start). The
/// first span's fit from the original weights is already current.
fn refit_spans(
    state: &mut dyn crate::backend::GptqColumns,
    grid: &dyn Grid,
    (rows, cols): (usize, usize),
    hdiag: &[f32],
    (group_len, groups): (usize, usize),
    start: usize,
    opts: &GptqOptions,
) -> Result<()> {
    let per_group = grid.params_per_group();
    let span = group_len * groups;
    let end = (start + opts.block).min(cols);
    for first in (start.div_ceil(span) * span..end)
        .step_by(span)
        .filter(|&c| c > 0)
    {
        let last = (first + span).min(cols);
        let cur = state.current_columns(first..last)?;
        let n = last - first;
        let mut params = vec![0f32; rows * groups * per_group];
        params
            .par_chunks_mut(groups * per_group)
            .zip(cur.par_chunks(n))
            .for_each(|(p, row)| grid.fit(row, &hdiag[first..last], p));
        let g0 = first / group_len;
        for g in 0..n.div_ceil(group_len) {
            let at: Vec<f32> = params
                .chunks(groups * per_group)
                .flat_map(|p| &p[g * per_group..(g + 1) * per_group])
                .copied()
                .collect();
            state.set_group_params(g0 + g, &at)?;
        }
    }
    Ok(())
}

/// `w` with the columns of dead inputs zeroed. The host passes over W (a
/// 7B MLP weight has 45M values) run over rows in parallel.
pub(crate) fn without_dead_inputs(w: &[f32], cols: usize, dead: &[usize]) -> Vec<f32> {
    let mut w = w.to_vec();
    if !dead.is_empty() {
        w.par_chunks_mut(cols).for_each(|row| {
            for &i in dead {
                row[i] = 0.0;
            }
        });
    }
    w
}

/// Every group's parameters on `grid`, `[rows, groups, params_per_group]`,
/// fitted to `w` in its original column order.
fn fit_groups(
    grid: &dyn Grid,
    w: &[f32],
    cols: usize,
    hdiag: &[f32],
    group_len: usize,
) -> Vec<f32> {
    // Host-fitted grids fit several groups (a super-block) at once.
    let n = grid.host_fit_groups().unwrap_or(1);
    let per_group = grid.params_per_group();
    let row_params = cols.div_ceil(group_len) * per_group;
    let mut params = vec![0f32; w.len() / cols * row_params];
    params
        .par_chunks_mut(row_params)
        .zip(w.par_chunks(cols))
        .for_each(|(out, row)| {
            for ((p, g), hd) in out
                .chunks_mut(per_group * n)
                .zip(row.chunks(group_len * n))
                .zip(hdiag.chunks(group_len * n))
            {
                grid.fit(g, hd, p);
            }
        });
    params
}

/// The columns of `w` in `order` (`order[k]` is the k-th column).
fn permute_columns(w: &[f32], cols: usize, order: &[usize]) -> Vec<f32> {
    let mut permuted = vec![0f32; w.len()];
    permuted
        .par_chunks_mut(cols)
        .zip(w.par_chunks(cols))
        .for_each(|(dst, row)| {
            for (d, &c) in dst.iter_mut().zip(order) {
                *d = row[c];
            }
        });
    permuted
}

/// GPTQ's report on `weight` quantized to `w_hat`: the relative output
/// errors of it and of each baseline, all from one
/// [`Backend::quadratic_traces`] call (timings left at 0 for the caller).
pub(crate) fn error_report(
    backend: &dyn Backend,
    weight: &Weight,
    f: &Factored,
    w_hat: &[f32],
    baselines: &[&[f32]],
) -> Result<GptqReport> {
    let (w, cols) = (weight.w, weight.cols);
    if let Some(b) = baselines.iter().find(|b| b.len() != w.len()) {
        return Err(Error::Config(format!(
            "GPTQ of '{}': a baseline quantization has {} values for [{}, {cols}]",
            weight.name,
            b.len(),
            weight.rows
        )));
    }
    // W, W − Ŵ and W − Ŵ of each baseline.
    let dw = diff(w, w_hat);
    let base_dw: Vec<Vec<f32>> = baselines.iter().map(|b| diff(w, b)).collect();
    let mut mats: Vec<&[f32]> = vec![w, &dw];
    mats.extend(base_dw.iter().map(Vec::as_slice));
    let traces = backend.quadratic_traces(weight.h, cols, &mats)?;
    let output_energy = traces[0];
    Ok(GptqReport {
        damp_requested: f.damp_requested,
        damp_used: f.damp_used,
        damp_retries: f.damp_retries,
        dead_columns: f.dead.len(),
        proxy_error: relative_to(traces[1], output_energy),
        output_energy,
        baseline_errors: traces[2..]
            .iter()
            .map(|&t| relative_to(t, output_energy))
            .collect(),
        perm: f
            .perm
            .as_ref()
            .map(|p| p.iter().map(|&c| c as u32).collect()),
        seconds_factor: f.seconds,
        seconds_update: 0.0,
        seconds_error: 0.0,
    })
}

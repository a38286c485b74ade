//! GPTVQ (van Baalen et al., arXiv 2402.15319): GPTQ whose grid is a set
//! of learned codebooks, each vector of `dim` consecutive weights of a row
//! rounded to the centroid nearest under a Hessian weighting.
//!
//! Written over GPTQ's column loop ([`crate::backend::GptqColumns`]) with
//! the VQ grid ([`VqGrid`], step `dim`): the Hessian, damping, dead inputs
//! and H⁻¹ factor are GPTQ's ([`crate::quant::gptq::factor`], columns in
//! natural order: a codebook spans contiguous columns, so no act-order).
//! When the loop reaches a codebook span (256 columns), each row group's
//! codebook is fitted by weighted EM to the current, error-corrected
//! weights of that span ([`crate::encoding::vq::em`]) and rounded to its
//! stored grid (int8 or f16); the loop then assigns every vector and feeds
//! its error forward. After the last column, the codebook update
//! ([`update`]) re-solves every centroid with the assignments fixed, and is
//! kept only where it lowers the output error.

pub mod update;

use crate::backend::{Backend, GptqSpec};
use crate::encoding::vq::row_scale::RowScales;
use crate::encoding::vq::{em, quantize_codebook, svd, AssignWeight, VqGrid, VqInit, VqScheme};
use crate::encoding::{Grid, VqTensor};
use crate::error::{Error, Result};
use crate::quant::gptq::error::diff;
use crate::quant::gptq::{
    error_report, relative_to, without_dead_inputs, Factored, GptqReport, Weight,
};
use rayon::prelude::*;
use serde::Serialize;
use std::time::Instant;

/// GPTVQ settings beyond GPTQ's damping and blocks.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct GptvqOptions {
    pub scheme: VqScheme,
    /// EM iterations at most (the paper: 100; stops when no assignment changes).
    pub em_iters: usize,
    pub init: VqInit,
    pub weighting: AssignWeight,
    /// Re-solve the centroids after assignment ([`update`]).
    pub codebook_update: bool,
    /// Conjugate-gradient steps of the codebook update at most.
    pub update_iters: usize,
    pub seed: u64,
}

impl GptvqOptions {
    /// The paper's settings (Mahalanobis init, 100 EM iterations, codebook
    /// update) with the weighting that measured better on SmolLM2 out of
    /// domain, the official code's `1/U_jj` (README, "Results: GPTVQ").
    pub fn new(scheme: VqScheme) -> Self {
        Self {
            scheme,
            em_iters: 100,
            init: VqInit::Mahalanobis,
            weighting: AssignWeight::CholeskyDiag,
            codebook_update: true,
            update_iters: 25,
            seed: 0,
        }
    }

    pub fn grid(&self) -> VqGrid {
        VqGrid {
            scheme: self.scheme,
            weighting: self.weighting,
            init: self.init,
            em_iters: self.em_iters,
            seed: self.seed,
        }
    }
}

/// What GPTVQ reports on one linear beyond GPTQ's report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GptvqReport {
    /// GPTQ's report: `proxy_error` is GPTVQ's, `seconds_update` the whole
    /// quantization (EM + column loop + codebook update).
    pub gptq: GptqReport,
    pub seconds_em: f64,
    pub seconds_assign: f64,
    pub seconds_codebook_update: f64,
    /// FLOPs of the EM iterations run, the column loop and the codebook
    /// update's GEMMs (multiply-adds count 2).
    pub em_flops: f64,
    pub assign_flops: f64,
    pub codebook_flops: f64,
    /// `proxy_error` before the codebook update (equal to it when the
    /// update is off or did not help).
    pub error_before_update: f64,
    /// Whether the updated codebooks were kept.
    pub update_kept: bool,
}

/// GPTVQ of `weight` given its factored Hessian (natural column order).
/// `baselines` are scored as in [`crate::quant::gptq::quantize_factored`].
pub fn quantize_factored(
    backend: &dyn Backend,
    weight: &Weight,
    f: &Factored,
    opts: &GptvqOptions,
    block: usize,
    baselines: &[&[f32]],
) -> Result<(VqTensor, GptvqReport)> {
    let (name, rows, cols) = (weight.name, weight.rows, weight.cols);
    let s = opts.scheme;
    s.check_shape(name, rows, cols)?;
    if f.perm.is_some() || f.cols != cols {
        return Err(Error::Config(format!(
            "GPTVQ of '{name}': needs a Hessian factored for its {cols} columns in natural order \
             (codebooks span contiguous columns; act-order does not apply)"
        )));
    }
    let t_all = Instant::now();
    let grid = opts.grid();
    let span = s.span();
    // Codebooks are fitted between blocks, so blocks must tile the spans.
    let block = if span.is_multiple_of(block) {
        block
    } else {
        span
    };
    let w0 = without_dead_inputs(weight.w, cols, &f.dead);
    let hdiag: Vec<f32> = (0..cols).map(|i| weight.h[i * cols + i]).collect();
    // The loop's groups: the codebook spans, or with row scales their
    // blocks (each row its own parameter set: codebook, scale, row scale).
    let unit = s.unit();
    let mut row_scales = (s.scale_block > 0).then(|| RowScales::new(rows, cols / unit));
    let spec = GptqSpec {
        grid: &grid,
        group_len: unit,
        block,
        hinv: &f.hinv,
        hdiag: &hdiag,
        perm: None,
        static_groups: None,
    };
    let mut state = backend.gptq_columns(w0.clone(), rows, cols, spec)?;
    let weights = column_weights(&f.hinv, cols, s.dim as usize, opts.weighting);
    let rpc = s.rows_per_codebook();
    let (d, k) = (s.dim as usize, s.centroids());
    // Row groups; the last may be shorter (ragged rows).
    let (groups, len) = (rows.div_ceil(rpc), s.codebook_len());
    let per_group = grid.params_per_group();
    let spans = s.spans(cols);
    let mut codebooks = vec![0f32; groups * spans * len];
    let mut scales = vec![1f32; groups * spans];
    let mut seconds_em = 0.0;
    let mut em_flops = 0.0;
    for start in (0..cols).step_by(block) {
        if start.is_multiple_of(span) {
            let t = Instant::now();
            let sp = start / span;
            let end = (start + span).min(cols);
            let mut cur = state.current_columns(start..end)?;
            if let Some(rs) = &mut row_scales {
                // Scales from the current weights; EM fits the normalised ones.
                rs.fit(&cur, start / unit, unit);
                for (r, row) in cur.chunks_mut(end - start).enumerate() {
                    for (b, v) in row.chunks_mut(unit).enumerate() {
                        let sc = rs.values[r * rs.blocks + start / unit + b];
                        v.iter_mut().for_each(|x| *x /= sc);
                    }
                }
            }
            // Each point's importance: its columns' weights, times its row
            // block's squared scale when normalised (so EM on the normalised
            // points minimises the same weighted error as on the weights).
            let width = end - start;
            let wts: Vec<f32> = (0..rows * width)
                .map(|i| {
                    let (r, j) = (i / width, i % width);
                    let sc = row_scales
                        .as_ref()
                        .map_or(1.0, |rs| rs.values[r * rs.blocks + (start + j) / unit]);
                    weights[start + j] * sc * sc
                })
                .collect();
            let n = width * rpc;
            // Each row group's codebook: initialised on the host, EM on the
            // backend, then rounded onto its stored grid (`VqGrid::fit` on
            // one group).
            let mut centroids = vec![0f32; groups * len];
            centroids
                .par_chunks_mut(len)
                .enumerate()
                .for_each(|(g, c)| {
                    let at = g * n..((g + 1) * n).min(cur.len());
                    let (pts, w) = (&cur[at.clone()], &wts[at]);
                    em::initialise(pts, w, d, k, opts.init, grid.seed_for(pts), c)
                });
            // Whole row groups in one EM call, a shorter last one in another.
            let full = rows / rpc;
            let mut ran = 0;
            let (cf, cl) = centroids.split_at_mut(full * len);
            if full > 0 {
                let (p, w) = (&cur[..full * n], &wts[..full * n]);
                ran = backend.vq_em(p, w, full, k, opts.em_iters, cf)?;
            }
            if groups > full {
                let (p, w) = (&cur[full * n..], &wts[full * n..]);
                ran = ran.max(backend.vq_em(p, w, 1, k, opts.em_iters, cl)?);
            }
            em_flops += (ran * (cur.len() / d) * (3 * d * k + 4 * d)) as f64;
            for (g, c) in centroids.chunks_mut(len).enumerate() {
                let at = g * spans + sp;
                scales[at] = quantize_codebook(c, s.codebook_bits);
                codebooks[at * len..(at + 1) * len].copy_from_slice(c);
            }
            let set = |p: &mut [f32], g: usize| {
                p[..len].copy_from_slice(&centroids[g * len..(g + 1) * len]);
                p[len] = scales[g * spans + sp];
            };
            match &row_scales {
                None => {
                    let mut params = vec![0f32; groups * per_group];
                    for (g, p) in params.chunks_mut(per_group).enumerate() {
                        set(p, g);
                    }
                    state.set_group_params(sp, &params)?;
                }
                Some(rs) => {
                    let mut params = vec![0f32; rows * per_group];
                    for b in start / unit..end.div_ceil(unit) {
                        for (r, p) in params.chunks_mut(per_group).enumerate() {
                            set(p, r / rpc);
                            p[len + 1] = rs.values[r * rs.blocks + b];
                        }
                        state.set_group_params(b, &params)?;
                    }
                }
            }
            seconds_em += t.elapsed().as_secs_f64();
        }
        state.quantize_block(start)?;
        if start + block < cols {
            state.update_rest(start)?;
        }
    }
    let codes = state.finish()?;
    // The loop ran on whole codebooks; SVD compression (1D) comes after.
    let mut t = VqTensor {
        rows,
        cols,
        scheme: VqScheme { svd_rank: 0, ..s },
        indices: codes.packed,
        codebooks,
        scales,
        svd: None,
        row_scales: row_scales.map(Box::new),
    };
    if s.svd_rank > 0 {
        t = svd::compress(&t, s.svd_rank as usize)?;
    }
    let seconds_assign = t_all.elapsed().as_secs_f64() - seconds_em;

    let t_update = Instant::now();
    let energy_and = |t: &VqTensor| -> Result<f64> {
        let dw = diff(weight.w, &t.dequantize()?);
        let tr = backend.quadratic_traces(weight.h, cols, &[weight.w, &dw])?;
        Ok(relative_to(tr[1], tr[0]))
    };
    let error_before_update = energy_and(&t)?;
    let mut update_kept = false;
    let mut codebook_flops = 0.0;
    if opts.codebook_update {
        let (candidate, steps) = updated(backend, &t, &w0, weight.h, opts.update_iters)?;
        codebook_flops = (steps + 2) as f64 * 2.0 * (rows * cols * cols) as f64;
        if energy_and(&candidate)? < error_before_update {
            t = candidate;
            update_kept = true;
        }
    }
    let seconds_codebook_update = t_update.elapsed().as_secs_f64();

    let t_error = Instant::now();
    let w_hat = t.dequantize()?;
    let mut report = error_report(backend, weight, f, &w_hat, baselines)?;
    report.seconds_update = t_all.elapsed().as_secs_f64();
    report.seconds_error = t_error.elapsed().as_secs_f64();
    Ok((
        t,
        GptvqReport {
            gptq: report,
            seconds_em,
            seconds_assign,
            seconds_codebook_update,
            em_flops,
            // Assignment (k·d·3 per vector) and GPTQ's feedback and updates.
            assign_flops: (rows * (cols / d) * 3 * d * k) as f64
                + crate::quant::gptq::flops(rows, cols, block).1,
            codebook_flops,
            error_before_update,
            update_kept,
        },
    ))
}

/// `t` after the codebook update ([`update::refine`] on the backend's
/// operator; of the factors, the basis fixed, when SVD-compressed), back on
/// its stored grid, and the conjugate-gradient steps taken.
fn updated(
    backend: &dyn Backend,
    t: &VqTensor,
    w: &[f32],
    h: &[f32],
    iters: usize,
) -> Result<(VqTensor, usize)> {
    let s = &t.scheme;
    let (rows, cols) = (t.rows, t.cols);
    let mut system = backend.vq_codebook_system(t, h)?;
    let mut out = t.clone();
    let steps = match &t.svd {
        None => {
            let (mut refined, steps) =
                update::refine(system.as_mut(), &t.codebooks, w, h, rows, cols, iters)?;
            for (cb, sc) in refined
                .chunks_mut(s.codebook_len())
                .zip(out.scales.iter_mut())
            {
                *sc = quantize_codebook(cb, s.codebook_bits);
            }
            out.codebooks = refined;
            steps
        }
        Some(f) => {
            let mut in_basis = update::InBasis::new(system.as_mut(), &f.basis, s.centroids());
            let (a, steps) = update::refine(&mut in_basis, &f.factors, w, h, rows, cols, iters)?;
            svd::with_factors(&mut out, a, f.basis.clone());
            steps
        }
    };
    Ok((out, steps))
}

/// The assignment weight of every column (`[cols]`) from H⁻¹'s upper
/// factor, each vector of `d` columns from its `U_FF` block: what EM
/// weights its points by, matching what the column loop assigns with.
fn column_weights(hinv: &[f32], cols: usize, d: usize, weighting: AssignWeight) -> Vec<f32> {
    let mut out = vec![0f32; cols];
    let mut u = [0f32; 16];
    for j in (0..cols).step_by(d) {
        for a in 0..d {
            for c in 0..d {
                u[a * d + c] = hinv[(j + a) * cols + j + c];
            }
        }
        weighting.of(&u[..d * d], d, &mut out[j..j + d]);
    }
    out
}

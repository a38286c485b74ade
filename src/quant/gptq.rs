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
//! The heavy parts are backend kernels: [`Backend::hessian_accumulator`], the
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
//! Codes use the same [`params_from_range`] and
//! [`quantize_value`](super::scheme::quantize_value) as RTN, and the result
//! is a [`QuantizedTensor`] in the usual packed layout, so the writers and
//! the packed forward take it unchanged. Not supported: per-tensor
//! granularity.

use super::packed::QuantizedTensor;
use super::rtn::check_finite;
use super::scheme::{params_from_range, Granularity, QuantScheme};
use crate::backend::cpu::gemm::dense_xwt;
use crate::backend::cpu::trace::quadratic_trace;
use crate::backend::{Backend, CpuBackend, GptqSpec, HessianAccumulator, StaticGroups};
use crate::error::{Error, Result};
use rayon::prelude::*;
use serde::Serialize;
use std::time::Instant;

/// The Hessian of one linear layer's inputs, accumulated batch by batch.
#[derive(Clone, Debug)]
pub struct Hessian {
    pub cols: usize,
    /// Calibration tokens seen so far.
    pub samples: usize,
    /// `[cols, cols]`, f32, `2/n · Σ x xᵀ`.
    pub h: Vec<f32>,
}

impl Hessian {
    pub fn new(cols: usize) -> Self {
        Self {
            cols,
            samples: 0,
            h: vec![0.0; cols * cols],
        }
    }

    /// Adds `x` `[tokens, cols]` (the inputs of the linear named `name`):
    /// `H *= n/(n+b); H += 2/(n+b) · XᵀX`. For many batches, a
    /// [`HessianAccumulation`] keeps H on the backend between them.
    pub fn add_batch(
        &mut self,
        backend: &dyn Backend,
        name: &str,
        x: &[f32],
        tokens: usize,
    ) -> Result<()> {
        let mut acc = HessianAccumulation::resume(backend, self.clone())?;
        acc.add_batch(name, x, tokens)?;
        *self = acc.finish()?;
        Ok(())
    }
}

/// A [`Hessian`] being accumulated on a backend, which keeps H (on the GPU:
/// resident buffers) between batches.
pub struct HessianAccumulation<'a> {
    cols: usize,
    samples: usize,
    acc: Box<dyn HessianAccumulator + 'a>,
}

impl<'a> HessianAccumulation<'a> {
    pub fn new(backend: &'a dyn Backend, cols: usize) -> Result<Self> {
        Self::resume(backend, Hessian::new(cols))
    }

    /// Continues accumulating `h`.
    pub fn resume(backend: &'a dyn Backend, h: Hessian) -> Result<Self> {
        Ok(Self {
            cols: h.cols,
            samples: h.samples,
            acc: backend.hessian_accumulator(h.h, h.cols, h.samples)?,
        })
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Adds `x` `[tokens, cols]`, the inputs of the linear(s) `name`;
    /// non-finite inputs are an error naming them.
    pub fn add_batch(&mut self, name: &str, x: &[f32], tokens: usize) -> Result<()> {
        // check_finite is the fast (vectorised) scan; the message is ours.
        let bad = check_finite(name, x)
            .err()
            .and_then(|_| x.iter().position(|v| !v.is_finite()));
        if let Some(i) = bad {
            return Err(Error::BadTensor {
                name: name.into(),
                msg: format!(
                    "calibration input value {} at token {}, feature {} is not finite; \
                     earlier layers overflow on this text (check the weights and the \
                     calibration file)",
                    x[i],
                    i / self.cols.max(1),
                    i % self.cols.max(1)
                ),
            });
        }
        self.acc.add(x, tokens)?;
        self.samples += tokens;
        Ok(())
    }

    /// Waits for the backend and returns the Hessian.
    pub fn finish(self) -> Result<Hessian> {
        Ok(Hessian {
            cols: self.cols,
            samples: self.samples,
            h: self.acc.finish()?,
        })
    }
}

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
}

impl Default for GptqOptions {
    fn default() -> Self {
        Self {
            damp: 0.01,
            block: 128,
            max_damp_retries: 16,
            act_order: true,
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
    /// Seconds spent on damping + Cholesky + inverse (host, f64), on the
    /// blocked column updates (backend kernels and packing), and on
    /// measuring `proxy_error` and `baseline_errors`
    /// ([`Backend::quadratic_traces`]).
    pub seconds_factor: f64,
    pub seconds_update: f64,
    pub seconds_error: f64,
}

/// The next damping after a failed Cholesky.
fn raise_damp(damp: f64) -> f64 {
    (2.0 * damp).max(1e-3)
}

/// What GPTQ derives from a Hessian alone, shared by the linears that read
/// the same inputs (q/k/v, gate/up): dead inputs, the act-order permutation
/// and the upper Cholesky factor of the damped, permuted H⁻¹.
#[derive(Clone, Debug)]
pub struct Factored {
    pub cols: usize,
    /// Inputs with `H[i, i] == 0`.
    pub dead: Vec<usize>,
    /// With act-order, `perm[k]` is the original index of the k-th column.
    pub perm: Option<Vec<usize>>,
    /// `[cols, cols]` f32, upper triangular, in permuted order.
    pub hinv: Vec<f32>,
    pub damp_requested: f64,
    pub damp_used: f64,
    pub damp_retries: u32,
    pub seconds: f64,
}

/// Checks and factors the Hessian `h` `[cols, cols]` of the inputs of the
/// linear(s) `name` (see [`Factored`]).
pub fn factor(
    backend: &dyn Backend,
    name: &str,
    h: &[f32],
    cols: usize,
    opts: &GptqOptions,
) -> Result<Factored> {
    let t = Instant::now();
    if h.len() != cols * cols {
        return Err(Error::BadTensor {
            name: format!("{name} (Hessian)"),
            msg: format!("{} values for [{cols}, {cols}]", h.len()),
        });
    }
    if opts.block == 0 || !opts.damp.is_finite() || opts.damp < 0.0 {
        return Err(Error::Config(format!(
            "GPTQ of '{name}': block {} and damp {} (need block > 0, damp >= 0)",
            opts.block, opts.damp
        )));
    }
    if check_finite(name, h).is_err() {
        return Err(Error::BadTensor {
            name: format!("{name} (Hessian)"),
            msg: "has non-finite entries: the calibration inputs overflow f32 when \
                  squared; check the weights of the earlier layers"
                .into(),
        });
    }
    // Dead inputs: a feature that was always zero carries no information;
    // give it a unit diagonal (its weights are zeroed by `quantize_factored`).
    // O(cols²) host passes, in parallel: a 11008² H is 121M values.
    let mut hd: Vec<f64> = h.par_iter().map(|&v| v as f64).collect();
    let mut dead = Vec::new();
    for i in 0..cols {
        let d = hd[i * cols + i];
        if d < 0.0 {
            return Err(Error::BadTensor {
                name: format!("{name} (Hessian)"),
                msg: format!("negative diagonal H[{i}, {i}] = {d}; not a Hessian of inputs"),
            });
        }
        if d == 0.0 {
            hd[i * cols + i] = 1.0;
            dead.push(i);
        }
    }
    // Act-order: rows and columns of H by decreasing diag(H).
    let mut perm = None;
    if opts.act_order {
        let mut order: Vec<usize> = (0..cols).collect();
        order.sort_by(|&a, &b| hd[b * cols + b].total_cmp(&hd[a * cols + a]));
        let mut permuted = vec![0f64; cols * cols];
        permuted
            .par_chunks_mut(cols)
            .zip(order.par_iter())
            .for_each(|(row, &i)| {
                for (x, &j) in row.iter_mut().zip(&order) {
                    *x = hd[i * cols + j];
                }
            });
        hd = permuted;
        perm = Some(order);
    }
    // Damping, then the upper Cholesky factor of H⁻¹.
    let (hinv, damp_used, damp_retries) = inverse_cholesky_upper(backend, name, &hd, cols, opts)?;
    Ok(Factored {
        cols,
        dead,
        perm,
        hinv,
        damp_requested: opts.damp,
        damp_used,
        damp_retries,
        seconds: t.elapsed().as_secs_f64(),
    })
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

fn check_args(
    name: &str,
    w: &[f32],
    rows: usize,
    cols: usize,
    h: &[f32],
    scheme: &QuantScheme,
) -> Result<()> {
    scheme.check_shape(name, rows, cols)?;
    if w.len() != rows * cols || h.len() != cols * cols {
        return Err(Error::BadTensor {
            name: name.into(),
            msg: format!(
                "{} weights and {} Hessian values for shape [{rows}, {cols}] (need {} and {})",
                w.len(),
                h.len(),
                rows * cols,
                cols * cols
            ),
        });
    }
    if scheme.granularity == Granularity::PerTensor {
        return Err(Error::Config(format!(
            "GPTQ of '{name}': per-tensor quantization is not supported; use groups or per-channel"
        )));
    }
    check_finite(name, w)
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
    if let Some(b) = baselines.iter().find(|b| b.len() != rows * cols) {
        return Err(Error::Config(format!(
            "GPTQ of '{name}': a baseline quantization has {} values for [{rows}, {cols}]",
            b.len()
        )));
    }
    if f.cols != cols || f.perm.is_some() != opts.act_order {
        return Err(Error::Config(format!(
            "GPTQ of '{name}': the factored Hessian is for {} columns{}, the weight has {cols}",
            f.cols,
            if f.perm.is_some() {
                " with act-order"
            } else {
                ""
            }
        )));
    }
    let t_update = Instant::now();
    // The host passes over W (a 7B MLP weight has 45M values) run over
    // rows in parallel.
    let mut wq = w.to_vec();
    if !f.dead.is_empty() {
        wq.par_chunks_mut(cols).for_each(|row| {
            for &i in &f.dead {
                row[i] = 0.0;
            }
        });
    }

    let group_len = scheme.group_len(cols);

    // Act-order: static groups from the weights as they are now, then the
    // columns of W in the factor's order.
    let mut fixed: Option<(Vec<u32>, Vec<f32>, Vec<u32>)> = None;
    if let Some(order) = &f.perm {
        let (mins, maxs) = backend.group_ranges(&wq, rows, cols, group_len)?;
        let (scales, zeros) = mins
            .iter()
            .zip(&maxs)
            .map(|(&lo, &hi)| params_from_range(lo, hi, scheme.bits, scheme.symmetric))
            .unzip();
        let mut permuted = vec![0f32; rows * cols];
        permuted
            .par_chunks_mut(cols)
            .zip(wq.par_chunks(cols))
            .for_each(|(dst, row)| {
                for (d, &c) in dst.iter_mut().zip(order) {
                    *d = row[c];
                }
            });
        wq = permuted;
        let group_of = order.iter().map(|&c| (c / group_len) as u32).collect();
        fixed = Some((group_of, scales, zeros));
    }
    let spec = GptqSpec {
        bits: scheme.bits,
        symmetric: scheme.symmetric,
        group_len,
        block: opts.block,
        hinv: &f.hinv,
        static_groups: fixed
            .as_ref()
            .map(|(group_of, scales, zeros)| StaticGroups {
                group_of,
                scales,
                zeros,
            }),
    };

    // Blocks of columns: quantize inside the block with error feedback,
    // then apply the block's errors to every later column at once.
    let mut state = backend.gptq_columns(wq, rows, cols, spec)?;
    for start in (0..cols).step_by(opts.block) {
        state.quantize_block(start)?;
        if start + opts.block < cols {
            state.update_rest(start)?;
        }
    }
    let out = state.finish()?;
    let (mut codes, scales, zeros) = (out.codes, out.scales, out.zeros);

    if let Some(order) = &f.perm {
        // Back to the original column order.
        let permuted = std::mem::take(&mut codes);
        codes = vec![0u32; rows * cols];
        codes
            .par_chunks_mut(cols)
            .zip(permuted.par_chunks(cols))
            .for_each(|(dst, src)| {
                for (&c, &q) in order.iter().zip(src) {
                    dst[c] = q;
                }
            });
    }
    let q = QuantizedTensor {
        rows,
        cols,
        scheme: *scheme,
        packed: backend.pack(&codes, rows, cols, scheme.bits)?,
        scales,
        zeros: zeros.iter().map(|&z| z as u8).collect(),
    };
    let seconds_update = t_update.elapsed().as_secs_f64();
    let t_error = Instant::now();
    // W, W − Ŵ and W − Ŵ of each baseline, in one backend call.
    let mut dw = backend.dequantize(&q)?;
    dw.par_iter_mut().zip(w).for_each(|(d, &x)| *d = x - *d);
    let base_dw: Vec<Vec<f32>> = baselines.iter().map(|b| diff(w, b)).collect();
    let mut mats: Vec<&[f32]> = vec![w, &dw];
    mats.extend(base_dw.iter().map(Vec::as_slice));
    let traces = backend.quadratic_traces(h, cols, &mats)?;
    let output_energy = traces[0];
    let report = GptqReport {
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
        seconds_update,
        seconds_error: t_error.elapsed().as_secs_f64(),
    };
    Ok((q, report))
}

/// `U` with `H⁻¹ = UᵀU` for `H + λ·mean(diag H)·I` (gptq.py: cholesky,
/// cholesky_inverse, cholesky upper), as f32 `[cols, cols]`, by the
/// backend's [`Backend::inverse_cholesky_upper`] (one Cholesky and one
/// triangular inverse). When the factorisation fails, λ is raised and it is
/// retried, with a warning; a GPU (f32) failure is first retried in f64 on
/// the CPU so the damping used does not depend on the device.
/// Returns the factor, the λ used and the number of retries.
fn inverse_cholesky_upper(
    backend: &dyn Backend,
    name: &str,
    h: &[f64],
    cols: usize,
    opts: &GptqOptions,
) -> Result<(Vec<f32>, f64, u32)> {
    let mean_diag = (0..cols).map(|i| h[i * cols + i]).sum::<f64>() / cols as f64;
    let mut damp = opts.damp;
    let mut retries = 0;
    loop {
        let lambda = damp * mean_diag;
        let damped: Vec<f32> = h
            .par_iter()
            .enumerate()
            .map(|(k, &v)| (v + if k % (cols + 1) == 0 { lambda } else { 0.0 }) as f32)
            .collect();
        let mut u = backend.inverse_cholesky_upper(&damped, cols)?;
        if u.is_none() && !backend.name().starts_with("cpu") {
            u = CpuBackend.inverse_cholesky_upper(&damped, cols)?;
        }
        match u {
            Some(u) => {
                if retries > 0 {
                    log::warn!(
                        "{name}: used damping {damp} (asked for {}) after {retries} failed Cholesky attempt(s)",
                        opts.damp
                    );
                }
                return Ok((u, damp, retries));
            }
            None if retries < opts.max_damp_retries => {
                let next = raise_damp(damp);
                log::warn!(
                    "{name}: Hessian not positive definite with damping {damp}; retrying with {next}"
                );
                damp = next;
                retries += 1;
            }
            None => {
                return Err(Error::BadTensor {
                    name: format!("{name} (Hessian)"),
                    msg: format!(
                        "not positive definite even with damping {damp} × mean diagonal after \
                         {retries} retries; the calibration inputs are degenerate"
                    ),
                })
            }
        }
    }
}

/// `w − w_hat`.
fn diff(w: &[f32], w_hat: &[f32]) -> Vec<f32> {
    w.par_iter().zip(w_hat).map(|(a, b)| a - b).collect()
}

/// `num / den`, 0 when `den` vanishes.
pub fn relative_to(num: f64, den: f64) -> f64 {
    if den <= 0.0 {
        0.0
    } else {
        num / den
    }
}

/// `tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)` with `ΔW = W − Ŵ`: the relative output
/// error of the quantized weight `w_hat` on the inputs whose Hessian is `h`
/// (0 when `W H Wᵀ` vanishes), on the host (the CPU backend's
/// [`quadratic_trace`]); shapes are the caller's to get right.
pub fn proxy_error(w: &[f32], w_hat: &[f32], h: &[f32], rows: usize, cols: usize) -> f64 {
    debug_assert_eq!(w.len(), rows * cols);
    relative_to(
        quadratic_trace(&diff(w, w_hat), h, cols),
        quadratic_trace(w, h, cols),
    )
}

/// `‖X Wᵀ − X Ŵᵀ‖² / ‖X Wᵀ‖²` for inputs `x` `[tokens, cols]`: the true
/// relative output error of a quantized linear (0 when `X Wᵀ` vanishes).
pub fn output_error(
    w: &[f32],
    w_hat: &[f32],
    x: &[f32],
    rows: usize,
    cols: usize,
    tokens: usize,
) -> f64 {
    let y = dense_xwt(x, w, tokens, cols, rows);
    let y_hat = dense_xwt(x, w_hat, tokens, cols, rows);
    let (num, den) = y
        .par_iter()
        .zip(y_hat.par_iter())
        .map(|(&a, &b)| (((a - b) as f64).powi(2), (a as f64).powi(2)))
        .reduce(|| (0.0, 0.0), |p, q| (p.0 + q.0, p.1 + q.1));
    if den <= 0.0 {
        0.0
    } else {
        num / den
    }
}

/// FLOPs of [`quantize`] on a `[rows, cols]` weight, by phase: the f64
/// factorisation (Cholesky of the reversed H and a triangular inverse: about
/// `2/3·cols³`, once per Hessian) and the column updates (in-block error feedback plus the
/// deferred GEMMs, 2 FLOPs per multiply-add).
pub fn flops(rows: usize, cols: usize, block: usize) -> (f64, f64) {
    let (r, c) = (rows as f64, cols as f64);
    // Cholesky c³/3 and triangular inverse c³/3.
    let factor = 2.0 / 3.0 * c * c * c;
    let mut update = 0.0;
    for start in (0..cols).step_by(block.max(1)) {
        let len = (cols - start).min(block) as f64;
        let rest = (cols - start) as f64 - len;
        // Column j of the block updates the len-1-j columns after it.
        update += r * len * (len - 1.0) + 2.0 * r * len * rest;
    }
    (factor, update)
}

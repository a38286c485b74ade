//! How much a quantized linear loses on its calibration inputs, from the
//! Hessian (`tr(ΔW H ΔWᵀ)`) or from the inputs themselves, and GPTQ's FLOPs.

use crate::backend::cpu::gemm::dense_xwt;
use crate::backend::cpu::trace::quadratic_trace;
use rayon::prelude::*;

/// `w − w_hat`.
pub(crate) fn diff(w: &[f32], w_hat: &[f32]) -> Vec<f32> {
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

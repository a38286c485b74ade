//! The arithmetic of GPTQ's report: weight differences, relative errors
//! (the traces themselves are [`crate::backend::Backend::quadratic_traces`])
//! and GPTQ's FLOPs.

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

/// FLOPs of [`super::quantize`] on a `[rows, cols]` weight, by phase: the
/// factorisation (Cholesky of the reversed H and a triangular inverse, f64
/// on the CPU and f32 on the GPU: about `2/3·cols³`, once per Hessian) and
/// the column updates (in-block error feedback plus the deferred GEMMs),
/// 2 FLOPs per multiply-add.
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

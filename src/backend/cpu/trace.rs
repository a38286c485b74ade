//! `tr(A H Aᵀ)` on the host: the dense SGEMM `A·H` ([`crate::gemm::dense_xwt`],
//! H being symmetric), then an f64 dot with `A`. The reference for
//! `shaders/trace.wgsl`.

use crate::gemm::dense_xwt;
use rayon::prelude::*;

/// `tr(A H Aᵀ)` in f64 accumulation, `a` `[a.len() / cols, cols]`, `h`
/// `[cols, cols]` symmetric; shapes already checked.
pub fn quadratic_trace(a: &[f32], h: &[f32], cols: usize) -> f64 {
    let rows = a.len() / cols;
    if rows == 0 {
        return 0.0;
    }
    let ah = dense_xwt(a, h, rows, cols, cols);
    a.par_iter()
        .zip(ah.par_iter())
        .map(|(&x, &y)| x as f64 * y as f64)
        .sum()
}

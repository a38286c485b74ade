//! `y = x · Wᵀ` for many tokens through `matrixmultiply`'s packed SIMD SGEMM
//! (AVX2/FMA or NEON, picked at run time), parallel over blocks of weight
//! rows. Packed weights are dequantized one block at a time into a scratch
//! buffer that stays in cache, so no full f32 copy of a weight ever exists;
//! with many tokens the dequantization is a small share of the work.
//!
//! A leaf of the crate: the dense f32 arithmetic the encodings' CPU
//! matmuls and the CPU backend build on.

use rayon::prelude::*;

/// Below this many tokens the GEMV-style kernels win: SGEMM repacks the
/// weights, which costs as much as reading them once per token.
pub const MIN_TOKENS: usize = 8;

/// Weight rows per parallel task: enough tasks for every core, and at least
/// 64 rows so the repacking of `x` per block stays small.
fn block_rows(n: usize) -> usize {
    let tasks = 4 * rayon::current_num_threads();
    n.div_ceil(tasks).next_multiple_of(16).max(64)
}

/// `yt[rows, m] = wb[rows, k] · x[m, k]ᵀ`.
fn sgemm_block(x: &[f32], m: usize, k: usize, wb: &[f32], yt: &mut [f32]) {
    let rows = wb.len() / k;
    debug_assert_eq!(yt.len(), rows * m);
    debug_assert!(x.len() >= m * k);
    // SAFETY: the pointers cover `rows x k`, `k x m` (x read transposed
    // through its strides) and `rows x m` elements, as the asserts check.
    unsafe {
        matrixmultiply::sgemm(
            rows,
            k,
            m,
            1.0,
            wb.as_ptr(),
            k as isize,
            1,
            x.as_ptr(),
            1,
            k as isize,
            0.0,
            yt.as_mut_ptr(),
            m as isize,
            1,
        );
    }
}

/// `[n, m]` → `[m, n]`.
pub fn transpose(yt: &[f32], m: usize, n: usize) -> Vec<f32> {
    let mut y = vec![0f32; m * n];
    y.par_chunks_mut(n).enumerate().for_each(|(t, row)| {
        for (j, v) in row.iter_mut().enumerate() {
            *v = yt[j * m + t];
        }
    });
    y
}

/// Dense `x[m, k] · w[n, k]ᵀ` → `[m, n]`.
pub fn dense_xwt(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let br = block_rows(n);
    let mut yt = vec![0f32; n * m];
    yt.par_chunks_mut(br * m).enumerate().for_each(|(b, out)| {
        let r0 = b * br;
        let rows = out.len() / m;
        sgemm_block(x, m, k, &w[r0 * k..(r0 + rows) * k], out);
    });
    transpose(&yt, m, n)
}

/// `x[m, k] · Wᵀ` with `W` `[n, k]` produced block by block: `dequant(r0,
/// rows, scratch)` writes rows `r0..r0 + rows` of `W` as f32 into `scratch`.
pub fn blocked_xwt(
    x: &[f32],
    m: usize,
    k: usize,
    n: usize,
    dequant: &(dyn Fn(usize, usize, &mut [f32]) + Sync),
) -> Vec<f32> {
    let br = block_rows(n);
    let mut yt = vec![0f32; n * m];
    yt.par_chunks_mut(br * m).enumerate().for_each_init(
        || vec![0f32; br * k],
        |scratch, (b, out)| {
            let r0 = b * br;
            let rows = out.len() / m;
            let wb = &mut scratch[..rows * k];
            dequant(r0, rows, wb);
            sgemm_block(x, m, k, wb, out);
        },
    );
    transpose(&yt, m, n)
}

/// Dot product with 16 independent lanes (4 SSE / 2 AVX registers), so it
/// vectorises without fast-math and hides the add latency. Shared by the
/// packed matmul and the CPU forward pass.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ac, bc) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

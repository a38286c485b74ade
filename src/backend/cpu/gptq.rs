//! CPU kernels for GPTQ: the running Hessian (SGEMM through
//! `matrixmultiply`, parallel over blocks of H rows), the in-block
//! quantization with error feedback (rayon over weight rows) and the
//! deferred update of the remaining columns (SGEMM per block of rows).
//! They are the reference the WGSL kernels are tested against.

use crate::backend::{GptqBlock, GptqBlockOut};
use crate::quant::scheme::{params_from_range, quantize_value};
use rayon::prelude::*;

/// Rows per parallel task: enough tasks for every core, at least 16.
fn rows_per_task(rows: usize) -> usize {
    rows.div_ceil(4 * rayon::current_num_threads()).max(16)
}

/// `H ← alpha·H + beta·XᵀX` with `x` `[tokens, cols]`. H is symmetric, so
/// each block of rows computes only its part left of the diagonal block
/// (about half the FLOPs) and the upper triangle is mirrored afterwards.
pub fn hessian_update(h: &mut [f32], cols: usize, n_seen: usize, x: &[f32], tokens: usize) {
    if tokens == 0 {
        return;
    }
    let n_total = (n_seen + tokens) as f64;
    let alpha = (n_seen as f64 / n_total) as f32;
    let beta = (2.0 / n_total) as f32;
    let br = rows_per_task(cols);
    h.par_chunks_mut(br * cols).enumerate().for_each(|(b, hb)| {
        let r0 = b * br;
        let m = hb.len() / cols;
        // SAFETY: A = X[:, r0..r0+m]ᵀ (m x tokens, strides 1 and cols)
        // and B = X[:, 0..r0+m] (tokens x (r0+m), strides cols and 1) lie
        // inside `x` (tokens·cols values, r0 + m <= cols); C is the first
        // r0+m columns of the m rows of `hb` (row stride cols).
        unsafe {
            matrixmultiply::sgemm(
                m,
                tokens,
                r0 + m,
                beta,
                x.as_ptr().add(r0),
                1,
                cols as isize,
                x.as_ptr(),
                cols as isize,
                1,
                alpha,
                hb.as_mut_ptr(),
                cols as isize,
                1,
            );
        }
    });
    mirror_lower(h, cols);
}

/// Copies the lower triangle of the `[n, n]` matrix `h` onto the upper one.
fn mirror_lower(h: &mut [f32], n: usize) {
    const T: usize = 64;
    for bi in (0..n).step_by(T) {
        for bj in (bi..n).step_by(T) {
            for i in bi..(bi + T).min(n) {
                for j in bj.max(i + 1)..(bj + T).min(n) {
                    h[i * n + j] = h[j * n + i];
                }
            }
        }
    }
}

/// GPTQ inside one block, row by row (see [`crate::backend::Backend::gptq_block`]).
pub fn gptq_block(w: &mut [f32], cols: usize, b: &GptqBlock, out: &mut GptqBlockOut) {
    let len = b.len();
    let groups = cols.div_ceil(b.group_len);
    let maxq = (1u32 << b.bits) - 1;
    w.par_chunks_mut(cols)
        .zip(out.codes.par_chunks_mut(cols))
        .zip(out.scales.par_chunks_mut(groups))
        .zip(out.zeros.par_chunks_mut(groups))
        .zip(out.err.par_chunks_mut(len))
        .for_each(|((((row, codes), scales), zeros), err)| {
            for (jj, e_out) in err.iter_mut().enumerate() {
                let j = b.start + jj;
                let g = match b.group_of {
                    Some(map) => map[j] as usize,
                    None => j / b.group_len,
                };
                if b.group_of.is_none() && j.is_multiple_of(b.group_len) {
                    // A group starts: its parameters come from the current weights.
                    let last = (j + b.group_len).min(cols);
                    let (lo, hi) = row[j..last]
                        .iter()
                        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &x| {
                            (lo.min(x), hi.max(x))
                        });
                    let (s, z) = params_from_range(lo, hi, b.bits, b.symmetric);
                    scales[g] = s;
                    zeros[g] = z;
                }
                let (s, z) = (scales[g], zeros[g]);
                let x = row[j];
                let q = quantize_value(x, 1.0 / s, z, maxq);
                let hrow = &b.hinv[jj * len..(jj + 1) * len];
                let e = (x - s * (q as f32 - z as f32)) / hrow[jj];
                codes[j] = q;
                *e_out = e;
                for (wk, &hk) in row[j + 1..b.end].iter_mut().zip(&hrow[jj + 1..]) {
                    *wk -= e * hk;
                }
            }
        });
}

/// `W[:, end..] −= Err · Hinv[block, end..]`.
pub fn gptq_update_rest(w: &mut [f32], cols: usize, end: usize, err: &[f32], hinv_rest: &[f32]) {
    let rows = w.len() / cols;
    let n = cols - end;
    if rows == 0 || n == 0 {
        return;
    }
    let len = err.len() / rows;
    if len == 0 {
        return;
    }
    let br = rows_per_task(rows);
    w.par_chunks_mut(br * cols)
        .zip(err.par_chunks(br * len))
        .for_each(|(wb, eb)| {
            let m = wb.len() / cols;
            // SAFETY: A = eb (m x len), B = hinv_rest (len x n), C = the
            // columns end..cols of wb's m rows (row stride cols); all in bounds.
            unsafe {
                matrixmultiply::sgemm(
                    m,
                    len,
                    n,
                    -1.0,
                    eb.as_ptr(),
                    len as isize,
                    1,
                    hinv_rest.as_ptr(),
                    n as isize,
                    1,
                    1.0,
                    wb.as_mut_ptr().add(end),
                    cols as isize,
                    1,
                );
            }
        });
}

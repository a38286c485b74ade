//! CPU VQ dequant-matmul `y[tokens, rows] = x[tokens, cols] · Wᵀ`, never
//! expanding W beyond a few rows: GEMV unpacks each row's indices once and
//! sums each vector's dot with its centroid, looked up in the codebook (a
//! few KiB, in L1), over four independent accumulators; from
//! [`gemm::MIN_TOKENS`] tokens on, blocks of rows are decoded into a
//! cache-sized scratch and multiplied by SGEMM, as the affine kernels do.

use super::{index_words, VqTensor};
use crate::encoding::affine::packing::{unpack_code, unpack_row};
use crate::error::{Error, Result};
use crate::gemm;
use rayon::prelude::*;

/// Rows decoded together; each token's `x` row stays in L1 across them.
const ROW_BLOCK: usize = 8;

fn check_inputs(v: &VqTensor, x: &[f32], tokens: usize) -> Result<()> {
    v.validate("matmul weight")?;
    if x.len() != tokens * v.cols {
        return Err(Error::Config(format!(
            "matmul input has {} values, expected {tokens} tokens x {} columns",
            x.len(),
            v.cols
        )));
    }
    Ok(())
}

pub fn matmul(v: &VqTensor, x: &[f32], tokens: usize) -> Result<Vec<f32>> {
    check_inputs(v, x, tokens)?;
    let (rows, cols) = (v.rows, v.cols);
    if tokens == 0 {
        return Ok(Vec::new());
    }
    let nidx = cols / v.scheme.dim as usize;
    if tokens >= gemm::MIN_TOKENS {
        return Ok(gemm::blocked_xwt(x, tokens, cols, rows, &|r0, n, wb| {
            let mut idx = vec![0u32; nidx];
            for (i, out) in wb.chunks_exact_mut(cols).take(n).enumerate() {
                v.dequantize_row(r0 + i, &mut idx, out);
            }
        }));
    }
    // GEMV-style: per row, unpack the indices once and take each token's
    // dot by lookup (the codebooks stay in L1); no decoded row is written.
    let mut yt = vec![0f32; rows * tokens];
    let s = &v.scheme;
    let d = s.dim as usize;
    let (words, len, span) = (index_words(s, cols), s.codebook_len(), s.span());
    yt.par_chunks_mut(ROW_BLOCK * tokens)
        .enumerate()
        .for_each_init(
            || vec![0u32; nidx],
            |idx, (b, out)| {
                let r0 = b * ROW_BLOCK;
                for i in 0..out.len() / tokens {
                    let r = r0 + i;
                    unpack_indices(&v.indices[r * words..(r + 1) * words], s.index_bits(), idx);
                    let first = s.codebook_of(cols, r, 0);
                    for t in 0..tokens {
                        let mut acc = 0f32;
                        for (sp, ix) in idx.chunks(span / d).enumerate() {
                            let cb = &v.codebooks[(first + sp) * len..(first + sp + 1) * len];
                            let v0 = sp * span / d;
                            let xt = &x[t * cols + v0 * d..t * cols + (v0 + ix.len()) * d];
                            acc += match d {
                                1 => lookup_dot::<1>(ix, cb, xt),
                                2 => lookup_dot::<2>(ix, cb, xt),
                                _ => lookup_dot::<4>(ix, cb, xt),
                            };
                        }
                        out[i * tokens + t] = acc;
                    }
                }
            },
        );
    if tokens == 1 {
        return Ok(yt);
    }
    Ok(gemm::transpose(&yt, tokens, rows))
}

/// A row's indices; widths dividing 32 word by word (branch-free, so the
/// compiler vectorises it), others through the bit stream.
fn unpack_indices(words: &[u32], bits: u32, out: &mut [u32]) {
    if !32u32.is_multiple_of(bits) {
        return unpack_row(words, bits, out);
    }
    let per = (32 / bits) as usize;
    let mask = (1u32 << bits) - 1;
    let full = out.len() / per;
    let mut chunks = out.chunks_exact_mut(per);
    for (o, &w) in (&mut chunks).zip(words) {
        for (j, v) in o.iter_mut().enumerate() {
            *v = (w >> (j as u32 * bits)) & mask;
        }
    }
    let rest = chunks.into_remainder();
    if let Some(&w) = words.get(full) {
        for (j, v) in rest.iter_mut().enumerate() {
            *v = (w >> (j as u32 * bits)) & mask;
        }
    }
}

/// `Σ_v x[v·D..] · cb[idx[v]·D..]` with four independent accumulators.
#[inline]
fn lookup_dot<const D: usize>(idx: &[u32], cb: &[f32], x: &[f32]) -> f32 {
    let mut acc = [0f32; 4];
    let (xs, ix) = (x.chunks_exact(4 * D), idx.chunks_exact(4));
    let tail: f32 = xs
        .remainder()
        .chunks_exact(D)
        .zip(ix.remainder())
        .map(|(xv, &i)| centroid_dot::<D>(cb, i, xv))
        .sum();
    for (xq, iq) in xs.zip(ix) {
        for l in 0..4 {
            acc[l] += centroid_dot::<D>(cb, iq[l], &xq[l * D..(l + 1) * D]);
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[inline(always)]
fn centroid_dot<const D: usize>(cb: &[f32], i: u32, x: &[f32]) -> f32 {
    let c = &cb[i as usize * D..i as usize * D + D];
    let mut s = 0f32;
    for p in 0..D {
        s += c[p] * x[p];
    }
    s
}

/// Plain reference: each weight looked up on its own, accumulated in f64.
pub fn matmul_reference(v: &VqTensor, x: &[f32], tokens: usize) -> Result<Vec<f64>> {
    check_inputs(v, x, tokens)?;
    let (rows, cols, s) = (v.rows, v.cols, &v.scheme);
    let (d, words, len) = (
        s.dim as usize,
        super::index_words(s, cols),
        s.codebook_len(),
    );
    let mut y = vec![0f64; tokens * rows];
    for r in 0..rows {
        let row = &v.indices[r * words..(r + 1) * words];
        let w: Vec<f64> = (0..cols)
            .map(|j| {
                let i = unpack_code(row, s.index_bits(), j / d) as usize;
                let cb = s.codebook_of(cols, r, j);
                v.codebooks[cb * len + i * d + j % d] as f64
            })
            .collect();
        for t in 0..tokens {
            y[t * rows + r] = w
                .iter()
                .zip(&x[t * cols..(t + 1) * cols])
                .map(|(a, b)| a * *b as f64)
                .sum();
        }
    }
    Ok(y)
}

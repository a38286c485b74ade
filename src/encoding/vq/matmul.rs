//! CPU VQ dequant-matmul `y[tokens, rows] = x[tokens, cols] · Wᵀ`, never
//! expanding W beyond a few rows: GEMV unpacks each row's indices once and
//! sums each vector's dot with its centroid, looked up in the codebook (a
//! few KiB, in L1), over four independent accumulators; from
//! [`gemm::MIN_TOKENS`] tokens on, blocks of rows are decoded into a
//! cache-sized scratch and multiplied by SGEMM, as the affine kernels do.

use super::{index_words, simd, VqTensor};
use crate::encoding::affine::packing::{unpack_code, unpack_row};
use crate::error::Result;
use crate::gemm;
use rayon::prelude::*;

/// Rows decoded together; each token's `x` row stays in L1 across them.
const ROW_BLOCK: usize = 8;

fn check_inputs(v: &VqTensor, x: &[f32], tokens: usize) -> Result<()> {
    v.validate("matmul weight")?;
    crate::encoding::check_activations(x, tokens, v.cols)
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
    // Units: columns of one codebook and one row scale (the spans, or the
    // row-scale blocks); a unit's partial dot is scaled once.
    let (words, len, unit) = (index_words(s, cols), s.codebook_len(), s.unit());
    let units = cols.div_ceil(unit);
    let unit_cb = |r: usize, u: usize| {
        let c = s.codebook_of(cols, r, u * unit);
        &v.codebooks[c * len..(c + 1) * len]
    };
    // AVX2: 16 centroids with whole index words per unit take the nibble
    // kernel, every other width the packed one; both read the activations
    // split by coordinate, `[tokens, d, cols / d]`.
    let avx2 = crate::encoding::avx2_fma();
    let nibbles =
        avx2 && s.index_bits() == 4 && unit.is_multiple_of(8 * d) && cols.is_multiple_of(8 * d);
    let packed = avx2 && !nibbles && s.index_bits() <= simd::MAX_PACKED_BITS;
    let xs: Vec<f32> = match nibbles || packed {
        true => x
            .chunks(cols)
            .flat_map(|xt| (0..d).flat_map(move |p| xt.iter().skip(p).step_by(d).copied()))
            .collect(),
        false => Vec::new(),
    };
    yt.par_chunks_mut(ROW_BLOCK * tokens)
        .enumerate()
        .for_each_init(
            || vec![0u32; nidx],
            |idx, (b, out)| {
                let r0 = b * ROW_BLOCK;
                for i in 0..out.len() / tokens {
                    let r = r0 + i;
                    if nibbles || packed {
                        // To the tensor's end: the packed kernel's loads may
                        // run past the row (what they read there is masked).
                        let row = &v.indices[r * words..];
                        for t in 0..tokens {
                            let xt = &xs[t * cols..(t + 1) * cols];
                            out[i * tokens + t] = (0..units)
                                .map(|u| {
                                    let (v0, v1) = (u * unit / d, ((u + 1) * unit).min(cols) / d);
                                    let part = |p: usize| &xt[p * nidx..(p + 1) * nidx];
                                    let cb = unit_cb(r, u);
                                    let dot = match nibbles {
                                        true => nibble_dot(d, &row[v0 / 8..v1 / 8], cb, &|p| {
                                            &part(p)[v0..v1]
                                        }),
                                        false => {
                                            packed_dot(d, row, s.index_bits(), (v0, v1), cb, &part)
                                        }
                                    };
                                    v.unit_scale(r, u) * dot
                                })
                                .sum();
                        }
                        continue;
                    }
                    unpack_indices(&v.indices[r * words..(r + 1) * words], s.index_bits(), idx);
                    for t in 0..tokens {
                        let mut acc = 0f32;
                        for (u, ix) in idx.chunks(unit / d).enumerate() {
                            let cb = unit_cb(r, u);
                            let v0 = u * unit / d;
                            let xt = &x[t * cols + v0 * d..t * cols + (v0 + ix.len()) * d];
                            let dot = match d {
                                1 => lookup_dot::<1>(ix, cb, xt),
                                2 => lookup_dot::<2>(ix, cb, xt),
                                _ => lookup_dot::<4>(ix, cb, xt),
                            };
                            acc += v.unit_scale(r, u) * dot;
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

/// [`simd::nibble_dot`] for `d`-dimensional vectors; `part(p)` is
/// coordinate `p` of the span's activations.
fn nibble_dot<'x>(d: usize, words: &[u32], cb: &[f32], part: &dyn Fn(usize) -> &'x [f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the caller checked `avx2_fma()`; the codebook has 16
    // centroids (4-bit indices) and each part one value per index.
    unsafe {
        match d {
            1 => simd::nibble_dot::<1>(words, cb, [part(0)]),
            2 => simd::nibble_dot::<2>(words, cb, [part(0), part(1)]),
            _ => simd::nibble_dot::<4>(words, cb, [part(0), part(1), part(2), part(3)]),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        // The same sum in scalar code (`avx2_fma()` is false here,
        // so the GEMV does not take this path).
        let mut acc = 0f32;
        for (k, &w) in words.iter().enumerate() {
            for l in 0..8 {
                let i = ((w >> (4 * l)) & 15) as usize;
                for p in 0..d {
                    acc += part(p)[8 * k + l] * cb[i * d + p];
                }
            }
        }
        acc
    }
}

/// [`simd::packed_dot`] for `d`-dimensional vectors `v0..v1` of `words`;
/// `part(p)` is coordinate `p` of the row's activations.
fn packed_dot<'x>(
    d: usize,
    words: &[u32],
    bits: u32,
    span: (usize, usize),
    cb: &[f32],
    part: &dyn Fn(usize) -> &'x [f32],
) -> f32 {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the caller checked `avx2_fma()` and `bits ≤ MAX_PACKED_BITS`;
    // the codebook has `2^bits` centroids, `words` starts at the row and
    // each part holds the row's `cols / d` values.
    unsafe {
        match d {
            1 => simd::packed_dot::<1>(words, bits, span, cb, [part(0)]),
            2 => simd::packed_dot::<2>(words, bits, span, cb, [part(0), part(1)]),
            _ => simd::packed_dot::<4>(words, bits, span, cb, [part(0), part(1), part(2), part(3)]),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        // Not reached (`avx2_fma()` is false here); the same sum in scalar code.
        (span.0..span.1)
            .map(|v| {
                let i = unpack_code(words, bits, v) as usize;
                (0..d).map(|p| part(p)[v] * cb[i * d + p]).sum::<f32>()
            })
            .sum()
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
                v.unit_scale(r, j / s.unit()) as f64 * v.codebooks[cb * len + i * d + j % d] as f64
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

//! CPU dequant-matmul `y[tokens, rows] = x[tokens, cols] · Wᵀ`, the reference
//! the WGSL kernels are checked against and a fast path in its own right.
//!
//! Per group: `y += scale * (Σ q_j x_j − zero · Σ x_j)`, with the group sums
//! of `x` computed once. Rows are processed in blocks (rayon over blocks):
//! a block's codes are unpacked to f32 once and reused for every token, and
//! the inner loops are fixed-width so the compiler vectorises them. 4-, 8-
//! and 2-bit codes unpack word by word; other widths use `unpack_code`.
//! Groups follow GPTQ: weight `j` is in group `j / group_len`, and the last
//! group of a row is shorter when `group_len` does not divide `cols`.
//!
//! 4- and 8-bit GEMV (one token) use AVX2+FMA kernels (`simd.rs`) when the
//! CPU has them, else portable loops; [`matmul_with`] can force the latter.
//! From [`gemm::MIN_TOKENS`] tokens on, blocks of rows are dequantized into
//! a cache-sized scratch and multiplied by SGEMM (`gemm.rs`).

use super::simd;
use crate::encoding::affine::packing::unpack_code;
use crate::encoding::QuantizedTensor;
use crate::error::Result;
use crate::gemm::{self, dot};
use rayon::prelude::*;

/// Rows unpacked together: their codes stay in L2 while every token's `x`
/// row (in L1) is reused across them.
const ROW_BLOCK: usize = 8;

pub fn matmul(q: &QuantizedTensor, x: &[f32], tokens: usize) -> Result<Vec<f32>> {
    matmul_with(q, x, tokens, true)
}

/// A consistent weight and `tokens` rows of `cols` activations.
fn check_inputs(q: &QuantizedTensor, x: &[f32], tokens: usize) -> Result<()> {
    q.validate("matmul weight")?;
    crate::encoding::check_activations(x, tokens, q.cols)
}

/// [`matmul`] with the SIMD kernels allowed (`simd`, used when the CPU has
/// them) or not (portable loops only), so tests can check both paths.
pub fn matmul_with(q: &QuantizedTensor, x: &[f32], tokens: usize, simd: bool) -> Result<Vec<f32>> {
    check_inputs(q, x, tokens)?;
    let (rows, cols) = (q.rows, q.cols);
    if tokens == 0 {
        return Ok(Vec::new());
    }
    let glen = q.scheme.group_len(cols);
    let gpr = q.n_groups();
    let wpr = q.words_per_row();
    let bits = q.scheme.bits;
    // Σ x per (token, group); per token, so groups restart at each row and
    // the last one may be short.
    let xsum: Vec<f32> = x
        .chunks_exact(cols)
        .flat_map(|xt| xt.chunks(glen).map(dot_ones))
        .collect();

    if simd && tokens >= gemm::MIN_TOKENS {
        return Ok(gemm::blocked_xwt(x, tokens, cols, rows, &|r0, n, wb| {
            let mut codes = vec![0u32; cols];
            for (i, out) in wb.chunks_exact_mut(cols).take(n).enumerate() {
                q.dequantize_row(r0 + i, &mut codes, out);
            }
        }));
    }
    if tokens == 1 && cfg!(target_endian = "little") {
        let simd = simd && crate::encoding::avx2_fma();
        if bits == 4 && glen.is_multiple_of(2) {
            return Ok(gemv_q4(q, x, &xsum, simd));
        }
        if bits == 8 {
            return Ok(gemv_q8(q, x, &xsum, simd));
        }
    }

    // Output as [rows, tokens] blocks, transposed at the end for tokens > 1.
    let mut yt = vec![0f32; rows * tokens];
    let padded = wpr * 32 / bits as usize;
    // Few, large jobs: each one allocates its unpack buffer (for_each_init),
    // and per-job buffers of 100+ KiB cost page faults if jobs are tiny.
    let blocks = rows.div_ceil(ROW_BLOCK);
    let min_len = blocks.div_ceil(4 * rayon::current_num_threads()).max(1);
    yt.par_chunks_mut(ROW_BLOCK * tokens)
        .enumerate()
        .with_min_len(min_len)
        .for_each_init(
            || vec![0f32; ROW_BLOCK * padded],
            |codes, (b, out)| {
                let r0 = b * ROW_BLOCK;
                let n = out.len() / tokens;
                for i in 0..n {
                    let row = &q.packed[(r0 + i) * wpr..(r0 + i + 1) * wpr];
                    unpack_row(row, bits, cols, &mut codes[i * padded..(i + 1) * padded]);
                }
                for t in 0..tokens {
                    let xt = &x[t * cols..(t + 1) * cols];
                    let st = &xsum[t * gpr..(t + 1) * gpr];
                    for i in 0..n {
                        let r = r0 + i;
                        let c = &codes[i * padded..i * padded + cols];
                        let mut acc = 0f32;
                        for (g, sx) in st.iter().enumerate() {
                            let k = g * glen..((g + 1) * glen).min(cols);
                            let d = dot(&c[k.clone()], &xt[k]);
                            let p = r * gpr + g;
                            acc += q.scales[p] * (d - q.zeros[p] as f32 * sx);
                        }
                        out[i * tokens + t] = acc;
                    }
                }
            },
        );
    if tokens == 1 {
        return Ok(yt);
    }
    let mut y = vec![0f32; tokens * rows];
    y.par_chunks_mut(rows).enumerate().for_each(|(t, yrow)| {
        for (r, v) in yrow.iter_mut().enumerate() {
            *v = yt[r * tokens + t];
        }
    });
    Ok(y)
}

/// Rows per SIMD kernel call: each `x` load feeds this many rows.
const GEMV_ROWS: usize = 4;

/// GEMV on 4-bit codes without an unpack buffer: byte `b` of a row holds
/// codes `2b` (low nibble) and `2b+1` (high), so with `x` split into even and
/// odd halves the dot is a plain vertical loop over bytes. Needs an even
/// group length (groups start on byte boundaries).
fn gemv_q4(q: &QuantizedTensor, x: &[f32], xsum: &[f32], simd: bool) -> Vec<f32> {
    let half = q.words_per_row() * 4;
    // Zero past `cols`: an odd last code's partner nibble is padding.
    let mut xe = vec![0f32; half];
    let mut xo = vec![0f32; half];
    for (j, &v) in x.iter().enumerate() {
        if j % 2 == 0 {
            xe[j / 2] = v;
        } else {
            xo[j / 2] = v;
        }
    }
    let group_bytes = q.scheme.group_len(q.cols) / 2;
    let mut xp = Vec::new();
    if simd && group_bytes.is_multiple_of(32) {
        xp = vec![0f32; half.next_multiple_of(32) * 2];
        for (j, &v) in x.iter().enumerate() {
            let (c, l, k) = (j / 64, j % 64 / 8, j % 8);
            xp[64 * c + 8 * k + l] = v;
        }
    }
    let p = simd::Gemv {
        xe: &xe,
        xo: &xo,
        xp: &xp,
        xsum,
        group_bytes,
        row_bytes: q.cols.div_ceil(2),
    };
    gemv_rows(q, &p, true, simd)
}

/// GEMV on 8-bit codes: bytes straight against `x`.
fn gemv_q8(q: &QuantizedTensor, x: &[f32], xsum: &[f32], simd: bool) -> Vec<f32> {
    let p = simd::Gemv {
        xe: x,
        xo: &[],
        xp: &[],
        xsum,
        group_bytes: q.scheme.group_len(q.cols),
        row_bytes: q.cols,
    };
    gemv_rows(q, &p, false, simd)
}

/// One row's code bytes, scales and zeros.
type RowRef<'a> = (&'a [u8], &'a [f32], &'a [u8]);

/// Rayon over blocks of rows; `simd` must only be true if
/// `avx2_fma()` said so.
fn gemv_rows(q: &QuantizedTensor, p: &simd::Gemv, q4: bool, simd: bool) -> Vec<f32> {
    let (gpr, rb) = (q.n_groups(), q.words_per_row() * 4);
    let bytes: &[u8] = bytemuck::cast_slice(&q.packed);
    let row = |r: usize| -> RowRef {
        (
            &bytes[r * rb..(r + 1) * rb],
            &q.scales[r * gpr..(r + 1) * gpr],
            &q.zeros[r * gpr..(r + 1) * gpr],
        )
    };
    let mut y = vec![0f32; q.rows];
    // A few jobs per thread for balance, none so small that scheduling shows.
    let per = q
        .rows
        .div_ceil(4 * rayon::current_num_threads())
        .max(64)
        .next_multiple_of(GEMV_ROWS);
    y.par_chunks_mut(per).enumerate().for_each(|(b, out)| {
        let r0 = b * per;
        #[cfg(target_arch = "x86_64")]
        if simd {
            let tail = r0 + out.len() / GEMV_ROWS * GEMV_ROWS;
            let mut blocks = out.chunks_exact_mut(GEMV_ROWS);
            for (k, o) in (&mut blocks).enumerate() {
                let r = r0 + k * GEMV_ROWS;
                let rows: [RowRef; GEMV_ROWS] = std::array::from_fn(|i| row(r + i));
                o.copy_from_slice(&simd_block(p, q4, rows));
            }
            for (i, o) in blocks.into_remainder().iter_mut().enumerate() {
                *o = simd_block(p, q4, [row(tail + i)])[0];
            }
            return;
        }
        let _ = simd;
        for (i, yv) in out.iter_mut().enumerate() {
            *yv = scalar_row(p, q4, row(r0 + i));
        }
    });
    y
}

#[cfg(target_arch = "x86_64")]
fn simd_block<const R: usize>(p: &simd::Gemv, q4: bool, rows: [RowRef; R]) -> [f32; R] {
    let (c, s, z) = (rows.map(|r| r.0), rows.map(|r| r.1), rows.map(|r| r.2));
    // SAFETY: only reached with `simd` true, which `matmul_with` sets only
    // when `avx2_fma()` found AVX2 and FMA; the kernels check bounds.
    unsafe {
        if q4 {
            simd::q4_rows(p, c, s, z)
        } else {
            simd::q8_rows(p, c, s, z)
        }
    }
}

/// Portable GEMV row (the fallback, and what tests check the SIMD path by).
fn scalar_row(p: &simd::Gemv, q4: bool, (bytes, scales, zeros): RowRef) -> f32 {
    let mut acc = 0f32;
    for (g, sx) in p.xsum.iter().enumerate() {
        let b0 = g * p.group_bytes;
        let k = b0..(b0 + p.group_bytes).min(p.row_bytes);
        let d = if q4 {
            dot_nibbles(&bytes[k.clone()], &p.xe[k.clone()], &p.xo[k])
        } else {
            dot_bytes(&bytes[k.clone()], &p.xe[k])
        };
        acc += scales[g] * (d - zeros[g] as f32 * sx);
    }
    acc
}

#[inline]
fn dot_nibbles(b: &[u8], xe: &[f32], xo: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let n = b.len() / 16 * 16;
    for ((bc, ec), oc) in b[..n]
        .chunks_exact(16)
        .zip(xe.chunks_exact(16))
        .zip(xo.chunks_exact(16))
    {
        for i in 0..16 {
            acc[i] += (bc[i] & 15) as i32 as f32 * ec[i] + (bc[i] >> 4) as i32 as f32 * oc[i];
        }
    }
    let tail: f32 = b[n..]
        .iter()
        .zip(&xe[n..])
        .zip(&xo[n..])
        .map(|((c, e), o)| (c & 15) as i32 as f32 * e + (c >> 4) as i32 as f32 * o)
        .sum();
    acc.iter().sum::<f32>() + tail
}

#[inline]
fn dot_bytes(b: &[u8], x: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (bc, xc) = (b.chunks_exact(16), x.chunks_exact(16));
    let tail: f32 = bc
        .remainder()
        .iter()
        .zip(xc.remainder())
        .map(|(&c, v)| c as i32 as f32 * v)
        .sum();
    for (c, v) in bc.zip(xc) {
        for i in 0..16 {
            acc[i] += c[i] as i32 as f32 * v[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Codes of one packed row as f32 into `out` (`words * 32 / bits` long).
/// 4- and 8-bit rows are read as little-endian bytes: splitting nibbles with
/// one shift for all bytes vectorises even on baseline SSE2, where per-lane
/// variable shifts (`w >> 4*i`) do not. Codes go through i32: x86 has a
/// vector i32→f32 conversion but (before AVX-512) no u32→f32 one.
fn unpack_row(row: &[u32], bits: u32, cols: usize, out: &mut [f32]) {
    match bits {
        4 if cfg!(target_endian = "little") => {
            let bytes: &[u8] = bytemuck::cast_slice(row);
            for (b, o) in bytes.iter().zip(out.chunks_exact_mut(2)) {
                o[0] = (b & 15) as i32 as f32;
                o[1] = (b >> 4) as i32 as f32;
            }
        }
        8 if cfg!(target_endian = "little") => {
            let bytes: &[u8] = bytemuck::cast_slice(row);
            for (b, o) in bytes.iter().zip(out.iter_mut()) {
                *o = *b as i32 as f32;
            }
        }
        4 => {
            for (w, o) in row.iter().zip(out.chunks_exact_mut(8)) {
                for (i, v) in o.iter_mut().enumerate() {
                    *v = ((w >> (4 * i)) & 15) as i32 as f32;
                }
            }
        }
        2 => {
            for (w, o) in row.iter().zip(out.chunks_exact_mut(16)) {
                for (i, v) in o.iter_mut().enumerate() {
                    *v = ((w >> (2 * i)) & 3) as i32 as f32;
                }
            }
        }
        _ => {
            for (j, v) in out[..cols].iter_mut().enumerate() {
                *v = unpack_code(row, bits, j) as f32;
            }
        }
    }
}

#[inline]
fn dot_ones(a: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let c = a.chunks_exact(8);
    let tail: f32 = c.remainder().iter().sum();
    for x in c {
        for i in 0..8 {
            acc[i] += x[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Plain reference: dequantize every weight and accumulate in f64.
/// Slow; tests and benchmarks check the fast paths against it.
pub fn matmul_reference(q: &QuantizedTensor, x: &[f32], tokens: usize) -> Result<Vec<f64>> {
    check_inputs(q, x, tokens)?;
    let (rows, cols) = (q.rows, q.cols);
    let (glen, gpr, wpr) = (q.scheme.group_len(cols), q.n_groups(), q.words_per_row());
    let mut y = vec![0f64; tokens * rows];
    for r in 0..rows {
        let row = &q.packed[r * wpr..(r + 1) * wpr];
        let w: Vec<f64> = (0..cols)
            .map(|j| {
                let g = r * gpr + j / glen;
                q.scales[g] as f64 * (unpack_code(row, q.scheme.bits, j) as f64 - q.zeros[g] as f64)
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

//! W4A8: 4-bit weight codes (any zero-point, symmetric or not) times INT8
//! activations. A group's integer dot product is `Σ c·x − z·Σ x` with `c`
//! the unsigned codes (0..=15) and `z` the group's zero-point: both sums
//! are exact in i32 (at most 15 · 127 per product), `Σ x` is computed once
//! per token and group and shared by every row. The output is then
//! `s_t · Σ_g (scale_g · dot_g)` in f32, groups in order, as for W8A8 and
//! as `shaders/matmul_i8.wgsl` (`matmul_w4a8`) computes it.
//!
//! Batches (16 tokens or more) widen the codes first: each becomes the
//! 8-bit symmetric code `c − z + 128` with the group's scale, so the W8A8
//! register tiles compute the very same integer sums and f32 operations
//! ([`widen_to_w8`]; the copy is a byte per weight, small beside a batch's
//! work). A few tokens run [`matmul_w4`] on the packed codes.
//!
//! Codes are the affine encoding's packing, eight per word, code `j` at
//! bits `4j`: byte `b` of a row holds columns `2b` (low nibble) and `2b+1`
//! (high nibble), so interleaving the low and high nibbles of 16 bytes
//! gives 32 codes in column order against 32 activation bytes.

use super::{QuantizedActivations, PARALLEL_TOKENS};
use crate::encoding::QuantizedTensor;
use rayon::prelude::*;

/// Nibbles 0..3 of `v` (its low 16 bits) as the four bytes of a word.
#[inline]
pub(super) fn spread_nibbles(v: u32) -> u32 {
    let x = v & 0xffff;
    let x = (x | (x << 8)) & 0x00ff_00ff;
    (x | (x << 4)) & 0x0f0f_0f0f
}

/// `Σ u·x` over the four byte pairs of `u` (unsigned) and `x` (signed).
#[inline]
fn dot_u8_i8(u: u32, x: u32) -> i32 {
    (0..4)
        .map(|j| ((u >> (8 * j)) & 0xff) as i32 * ((x >> (8 * j)) as u8 as i8) as i32)
        .sum()
}

/// `Σ c·x` of one group: `w` its weight words (8 codes each), `x` the
/// token's words over the same columns (twice as many).
fn group_dot_scalar(w: &[u32], x: &[u32]) -> i32 {
    w.iter()
        .zip(x.chunks_exact(2))
        .map(|(&v, xs)| {
            dot_u8_i8(spread_nibbles(v), xs[0]) + dot_u8_i8(spread_nibbles(v >> 16), xs[1])
        })
        .sum()
}

fn group_dot(w: &[u32], x: &[u32], avx2: bool) -> i32 {
    #[cfg(target_arch = "x86_64")]
    if avx2 && w.len() >= 4 {
        let whole = w.len() / 4 * 4;
        // SAFETY: `avx2` comes from `crate::encoding::avx2_fma()`, which
        // checked the CPU supports AVX2; `w` holds `whole` words and `x`
        // twice as many.
        let head = unsafe { group_dot_avx2(&w[..whole], &x[..2 * whole]) };
        return head + group_dot_scalar(&w[whole..], &x[2 * whole..]);
    }
    let _ = avx2;
    group_dot_scalar(w, x)
}

/// 32 codes per step ([`step`]), summed to i32 lanes, then across them.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn group_dot_avx2(w: &[u32], x: &[u32]) -> i32 {
    use std::arch::x86_64::*;
    let mut acc = _mm256_setzero_si256();
    for (wc, xc) in w.chunks_exact(4).zip(x.chunks_exact(8)) {
        acc = _mm256_add_epi32(acc, step(wc.as_ptr(), xc.as_ptr()));
    }
    super::hsum_i32(acc)
}

/// The products of 32 codes (the 4 words at `w`) with 32 activations (the
/// 8 words at `x`) in eight i32 lanes: the nibbles of 16 bytes split and
/// interleaved into column order, multiplied with the activations' signed
/// bytes and summed in pairs to i16 (`vpmaddubsw`: at most 2 · 15 · 127,
/// no saturation), then to i32.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn step(w: *const u32, x: *const u32) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    let mask = _mm_set1_epi8(0x0f);
    let v = _mm_loadu_si128(w.cast());
    let lo = _mm_and_si128(v, mask);
    let hi = _mm_and_si128(_mm_srli_epi16(v, 4), mask);
    let codes = _mm256_set_m128i(_mm_unpackhi_epi8(lo, hi), _mm_unpacklo_epi8(lo, hi));
    let p = _mm256_maddubs_epi16(codes, _mm256_loadu_si256(x.cast()));
    _mm256_madd_epi16(p, _mm256_set1_epi16(1))
}

/// `Σ c·x` of eight consecutive groups of `gw` weight words (a multiple
/// of 4): one accumulator per group, then one `hadd` tree for all eight
/// instead of a horizontal sum each (integer sums: the order is free).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn eight_group_dots(w: &[u32], x: &[u32], gw: usize) -> [i32; 8] {
    use std::arch::x86_64::*;
    assert!(w.len() >= 8 * gw && x.len() >= 16 * gw && gw.is_multiple_of(4));
    let mut accs = [_mm256_setzero_si256(); 8];
    for (g, acc) in accs.iter_mut().enumerate() {
        for k in (g * gw..(g + 1) * gw).step_by(4) {
            *acc = _mm256_add_epi32(*acc, step(w.as_ptr().add(k), x.as_ptr().add(2 * k)));
        }
    }
    let h01 = _mm256_hadd_epi32(accs[0], accs[1]);
    let h23 = _mm256_hadd_epi32(accs[2], accs[3]);
    let h45 = _mm256_hadd_epi32(accs[4], accs[5]);
    let h67 = _mm256_hadd_epi32(accs[6], accs[7]);
    let (h03, h47) = (_mm256_hadd_epi32(h01, h23), _mm256_hadd_epi32(h45, h67));
    // Lane i of each 128-bit half: half of group i's (or i + 4's) sum.
    let sum = _mm256_add_epi32(
        _mm256_permute2x128_si256(h03, h47, 0x20),
        _mm256_permute2x128_si256(h03, h47, 0x31),
    );
    let mut out = [0i32; 8];
    _mm256_storeu_si256(out.as_mut_ptr().cast(), sum);
    out
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn eight_group_dots(_: &[u32], _: &[u32], _: usize) -> [i32; 8] {
    unreachable!("eights is 0 off x86-64")
}

/// `Σ x` of each group of each token, `[tokens, groups]`.
fn group_sums(a: &QuantizedActivations, group_x_words: usize, groups: usize) -> Vec<i32> {
    let xpr = a.cols / 4;
    let sum = |i: usize| -> i32 {
        let (t, g) = (i / groups, i % groups);
        let k = g * group_x_words..((g + 1) * group_x_words).min(xpr);
        a.packed[t * xpr..(t + 1) * xpr][k]
            .iter()
            .map(|&v| dot_u8_i8(0x0101_0101, v))
            .sum()
    };
    match a.tokens < PARALLEL_TOKENS {
        true => (0..a.tokens * groups).map(sum).collect(),
        false => (0..a.tokens * groups).into_par_iter().map(sum).collect(),
    }
}

/// `y = x · Wᵀ` `[tokens, rows]` for 4-bit `w` in groups of `glen`
/// columns (a multiple of 8; the caller checked the shapes).
pub(super) fn matmul_w4(w: &QuantizedTensor, a: &QuantizedActivations, glen: usize, y: &mut [f32]) {
    let (rows, wpr, xpr) = (w.rows, w.words_per_row(), a.cols / 4);
    let groups = w.n_groups();
    let (gw, gx) = (glen / 8, glen / 4);
    let sums = group_sums(a, gx, groups);
    let avx2 = super::super::avx2_fma();
    // Eight whole groups at a time get their sums from one AVX2 pass.
    let eights = match avx2 && gw.is_multiple_of(4) {
        true => (wpr / gw) / 8,
        false => 0,
    };
    let output = |t: usize, r: usize| -> f32 {
        let row = &w.packed[r * wpr..(r + 1) * wpr];
        let x = &a.packed[t * xpr..(t + 1) * xpr];
        let mut dots = [0i32; 8];
        let mut acc = 0f32;
        for g in 0..groups {
            if g % 8 == 0 && g / 8 < eights {
                // SAFETY: `eights > 0` only when `avx2_fma()` holds; the
                // eight groups' words lie inside `row` and `x`.
                dots = unsafe { eight_group_dots(&row[g * gw..], &x[g * gx..], gw) };
            }
            let dot = match g / 8 < eights {
                true => dots[g % 8],
                false => {
                    let (kw, kx) = (
                        g * gw..((g + 1) * gw).min(wpr),
                        g * gx..((g + 1) * gx).min(xpr),
                    );
                    group_dot(&row[kw], &x[kx], avx2)
                }
            };
            let z = w.zeros[r * groups + g] as i32;
            acc += w.scales[r * groups + g] * (dot - z * sums[t * groups + g]) as f32;
        }
        a.scales[t] * acc
    };
    if a.tokens >= PARALLEL_TOKENS {
        y.par_chunks_mut(rows).enumerate().for_each(|(t, yt)| {
            for (r, o) in yt.iter_mut().enumerate() {
                *o = output(t, r);
            }
        });
        return;
    }
    let block = rows.div_ceil(4 * rayon::current_num_threads()).max(64);
    for (t, yt) in y.chunks_mut(rows).enumerate() {
        yt.par_chunks_mut(block).enumerate().for_each(|(b, out)| {
            for (i, o) in out.iter_mut().enumerate() {
                *o = output(t, b * block + i);
            }
        });
    }
}

/// `w`'s codes as 8-bit symmetric ones, `c − z + 128` (in 113..=143), with
/// the same scales: the same signed weights `c − z`, in the layout the
/// W8A8 kernels take.
pub(super) fn widen_to_w8(w: &QuantizedTensor) -> crate::error::Result<QuantizedTensor> {
    let scheme = crate::encoding::QuantScheme::new(8, true, w.scheme.granularity)?;
    let (wpr4, wpr8, groups) = (w.words_per_row(), w.cols.div_ceil(4), w.n_groups());
    let glen = w.scheme.group_len(w.cols);
    let mut packed = vec![0u32; w.rows * wpr8];
    packed
        .par_chunks_mut(wpr8)
        .enumerate()
        .for_each(|(r, out)| {
            let row = &w.packed[r * wpr4..(r + 1) * wpr4];
            for (k, o) in out.iter_mut().enumerate() {
                // Four codes of one group (groups are whole words of 8).
                let z = w.zeros[r * groups + 4 * k / glen] as u32;
                let nibbles = spread_nibbles(row[k / 2] >> (16 * (k % 2)));
                // Per byte c + 128 − z: no byte leaves 0..=255, so no carries.
                *o = nibbles + 0x8080_8080 - z * 0x0101_0101;
            }
        });
    Ok(QuantizedTensor {
        rows: w.rows,
        cols: w.cols,
        scheme,
        packed,
        scales: w.scales.clone(),
        zeros: vec![128; w.zeros.len()],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nibbles_spread_in_column_order() {
        assert_eq!(spread_nibbles(0x8765_4321), 0x0403_0201);
        assert_eq!(spread_nibbles(0x8765_4321 >> 16), 0x0807_0605);
    }

    #[test]
    fn avx2_dot_equals_the_scalar_one() {
        let w: Vec<u32> = (0..12u32).map(|i| i.wrapping_mul(0x9e37_79b9)).collect();
        let x: Vec<u32> = (0..24u32)
            .map(|i| i.wrapping_mul(0x85eb_ca6b) ^ 0x8080_0180)
            .collect();
        let want = group_dot_scalar(&w, &x);
        assert_eq!(group_dot(&w, &x, crate::encoding::avx2_fma()), want);
        assert_eq!(
            group_dot(&w[..5], &x[..10], crate::encoding::avx2_fma()),
            group_dot_scalar(&w[..5], &x[..10])
        );
    }
}

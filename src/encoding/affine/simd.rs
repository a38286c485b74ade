//! AVX2+FMA GEMV kernels for 4- and 8-bit codes, chosen at run time.
//!
//! Each call handles `R` rows at once so every `x` load feeds `R` rows, with
//! two accumulators per row to hide FMA latency. Codes widen with
//! `vpmovzxbd` + `vcvtdq2ps`; activations and sums stay f32 (the CPU path is
//! the reference the GPU is checked against, so `x` is never quantized).

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// One block of rows for a GEMV: per row its code bytes and its per-group
/// scales and zeros; `x` data shared by all rows.
pub(super) struct Gemv<'a> {
    /// 4-bit: `x` even positions / odd positions (each `bytes` long);
    /// 8-bit: `xe` is `x` itself and `xo` is unused.
    pub xe: &'a [f32],
    pub xo: &'a [f32],
    /// 4-bit only, when groups span whole 64-code chunks (else empty): `x`
    /// permuted per chunk as `xp[64c + 8k + l] = x[64c + 8l + k]`, matching
    /// nibble `k` of u32 lane `l` of a 32-byte load, so codes unpack with
    /// in-lane shifts instead of byte shuffles.
    pub xp: &'a [f32],
    /// Σx per group.
    pub xsum: &'a [f32],
    /// Bytes per (full) group and bytes per row that hold codes.
    pub group_bytes: usize,
    pub row_bytes: usize,
}

/// The sum of the eight f32 lanes of `v` (also the GGUF GEMV's).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

/// 4-bit GEMV for `R` rows: `out[i] = Σ_g s·(Σ q·x − z·Σx)`.
///
/// # Safety
/// The CPU must support AVX2 and FMA ([`crate::encoding::avx2_fma`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn q4_rows<const R: usize>(
    p: &Gemv,
    rows: [&[u8]; R],
    scales: [&[f32]; R],
    zeros: [&[u8]; R],
) -> [f32; R] {
    let nb = p.row_bytes;
    // Bounds for every unchecked load below: all byte offsets are < nb.
    assert!(p.xe.len() >= nb && p.xo.len() >= nb);
    assert!(p.xp.is_empty() || (p.xp.len() >= 2 * nb && p.group_bytes.is_multiple_of(32)));
    for i in 0..R {
        assert!(rows[i].len() >= nb && scales[i].len() >= p.xsum.len());
        assert!(zeros[i].len() >= p.xsum.len());
    }
    let mask = _mm_set1_epi8(0x0f);
    let m15 = _mm256_set1_epi32(15);
    let mut out = [0f32; R];
    // Σ_g s·(Σ q·x) kept as vectors, summed horizontally once per row at the
    // end (a horizontal sum per group cost ~10% of the loop).
    let mut total = [_mm256_setzero_ps(); R];
    // Prefetch target: the same offset in the next block of `R` rows (rows
    // are contiguous); past the end it is harmless, prefetches never fault.
    let ahead = R * rows[0].len();
    for (g, &sx) in p.xsum.iter().enumerate() {
        let b0 = g * p.group_bytes;
        let b1 = (b0 + p.group_bytes).min(nb);
        let mut a0 = [_mm256_setzero_ps(); R];
        let mut a1 = [_mm256_setzero_ps(); R];
        let mut b = b0;
        if !p.xp.is_empty() {
            while b + 32 <= b1 {
                // The next block of rows, one line per row per 64 bytes: the
                // hardware prefetcher alone left one core at ~2 GB/s.
                if b.is_multiple_of(64) {
                    for row in rows {
                        _mm_prefetch::<_MM_HINT_T0>(
                            row.as_ptr().wrapping_add(ahead + b) as *const i8
                        );
                    }
                }
                // SAFETY: b + 32 <= nb and 2b + 64 <= xp.len(), checked above.
                let v: [__m256i; R] = std::array::from_fn(|i| {
                    _mm256_loadu_si256(rows[i].as_ptr().add(b) as *const __m256i)
                });
                let xc = p.xp.as_ptr().add(2 * b);
                // Unrolled by hand: shift counts must be immediates, and at
                // opt-level 2 a `for k` loop kept accumulators on the stack.
                macro_rules! nibble {
                    ($k:literal, $acc:ident) => {
                        let xk = _mm256_loadu_ps(xc.add(8 * $k));
                        for i in 0..R {
                            let c = _mm256_and_si256(_mm256_srli_epi32::<{ 4 * $k }>(v[i]), m15);
                            $acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(c), xk, $acc[i]);
                        }
                    };
                }
                // Nibble 0 needs no shift and nibble 7 no mask: two fewer
                // integer ops per 64 codes on the ports the FMAs also use.
                let x0 = _mm256_loadu_ps(xc);
                let x7 = _mm256_loadu_ps(xc.add(56));
                for i in 0..R {
                    let c0 = _mm256_and_si256(v[i], m15);
                    a0[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(c0), x0, a0[i]);
                    let c7 = _mm256_srli_epi32::<28>(v[i]);
                    a1[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(c7), x7, a1[i]);
                }
                nibble!(1, a1);
                nibble!(2, a0);
                nibble!(3, a1);
                nibble!(4, a0);
                nibble!(5, a1);
                nibble!(6, a0);
                b += 32;
            }
        }
        while b + 16 <= b1 {
            // The next block of rows, one line per row per 64 bytes: the
            // hardware prefetcher alone left one core at ~2 GB/s.
            if b.is_multiple_of(64) {
                for row in rows {
                    _mm_prefetch::<_MM_HINT_T0>(row.as_ptr().wrapping_add(ahead + b) as *const i8);
                }
            }
            // SAFETY: b + 16 <= nb, checked above against every slice.
            let xe0 = _mm256_loadu_ps(p.xe.as_ptr().add(b));
            let xe1 = _mm256_loadu_ps(p.xe.as_ptr().add(b + 8));
            let xo0 = _mm256_loadu_ps(p.xo.as_ptr().add(b));
            let xo1 = _mm256_loadu_ps(p.xo.as_ptr().add(b + 8));
            for i in 0..R {
                let v = _mm_loadu_si128(rows[i].as_ptr().add(b) as *const __m128i);
                let lo = _mm_and_si128(v, mask);
                let hi = _mm_and_si128(_mm_srli_epi16(v, 4), mask);
                let l0 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo));
                let l1 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_unpackhi_epi64(lo, lo)));
                let h0 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi));
                let h1 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_unpackhi_epi64(hi, hi)));
                a0[i] = _mm256_fmadd_ps(l0, xe0, a0[i]);
                a1[i] = _mm256_fmadd_ps(l1, xe1, a1[i]);
                a0[i] = _mm256_fmadd_ps(h0, xo0, a0[i]);
                a1[i] = _mm256_fmadd_ps(h1, xo1, a1[i]);
            }
            b += 16;
        }
        for i in 0..R {
            let s = scales[i][g];
            total[i] = _mm256_fmadd_ps(_mm256_set1_ps(s), _mm256_add_ps(a0[i], a1[i]), total[i]);
            // Short groups and tails (group 20, the last ragged group).
            let mut d = 0f32;
            for ((&c, e), o) in rows[i][b..b1].iter().zip(&p.xe[b..b1]).zip(&p.xo[b..b1]) {
                d += (c & 15) as f32 * e + (c >> 4) as f32 * o;
            }
            out[i] += s * (d - zeros[i][g] as f32 * sx);
        }
    }
    for i in 0..R {
        out[i] += hsum(total[i]);
    }
    out
}

/// 8-bit GEMV for `R` rows; `p.xe` is `x`.
///
/// # Safety
/// The CPU must support AVX2 and FMA ([`crate::encoding::avx2_fma`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn q8_rows<const R: usize>(
    p: &Gemv,
    rows: [&[u8]; R],
    scales: [&[f32]; R],
    zeros: [&[u8]; R],
) -> [f32; R] {
    let nb = p.row_bytes;
    // Bounds for every unchecked load below: all offsets are < nb.
    assert!(p.xe.len() >= nb);
    for i in 0..R {
        assert!(rows[i].len() >= nb && scales[i].len() >= p.xsum.len());
        assert!(zeros[i].len() >= p.xsum.len());
    }
    let mut out = [0f32; R];
    // Prefetch target: the same offset in the next block of `R` rows (rows
    // are contiguous); past the end it is harmless, prefetches never fault.
    let ahead = R * rows[0].len();
    for (g, &sx) in p.xsum.iter().enumerate() {
        let b0 = g * p.group_bytes;
        let b1 = (b0 + p.group_bytes).min(nb);
        let mut a0 = [_mm256_setzero_ps(); R];
        let mut a1 = [_mm256_setzero_ps(); R];
        let mut b = b0;
        let (xp, mut w) = (p.xe.as_ptr(), [std::ptr::null::<u8>(); R]);
        while b + 16 <= b1 {
            // The next block of rows, one line per row per 64 bytes: the
            // hardware prefetcher alone left one core at ~2 GB/s.
            if b.is_multiple_of(64) {
                for row in rows {
                    _mm_prefetch::<_MM_HINT_T0>(row.as_ptr().wrapping_add(ahead + b) as *const i8);
                }
            }
            // SAFETY: b + 16 <= nb, checked above against every slice.
            let x0 = _mm256_loadu_ps(xp.add(b));
            let x1 = _mm256_loadu_ps(xp.add(b + 8));
            for i in 0..R {
                w[i] = rows[i].as_ptr().add(b);
                let c0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(w[i] as *const __m128i));
                let c1 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(w[i].add(8) as *const __m128i));
                a0[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(c0), x0, a0[i]);
                a1[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(c1), x1, a1[i]);
            }
            b += 16;
        }
        for i in 0..R {
            let mut d = hsum(_mm256_add_ps(a0[i], a1[i]));
            for (&c, v) in rows[i][b..b1].iter().zip(&p.xe[b..b1]) {
                d += c as f32 * v;
            }
            out[i] += scales[i][g] * (d - zeros[i][g] as f32 * sx);
        }
    }
    out
}

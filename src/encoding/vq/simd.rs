//! AVX2+FMA GEMV kernel for VQ codebooks of 16 centroids (4-bit indices:
//! 2D at 2 bits per weight, 1D at 4, 4D at 1), chosen at run time. Eight
//! indices at a time come out of one index word by variable shifts; each
//! coordinate's 16 centroid values sit in two registers and are looked up
//! with two in-register permutes and a blend (no memory gathers, which
//! are slow on several x86 cores). Activations are split by coordinate
//! once per token (`xs[p][v] = x[v·D + p]`).

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// `Σ_v Σ_p xs[p][v] · cb[idx(v)·D + p]` over the `8 · words.len()`
/// vectors whose 4-bit indices are packed in `words` (low bits first).
///
/// # Safety
/// The CPU must support AVX2 and FMA ([`crate::encoding::avx2_fma`]); `cb` holds 16
/// centroids (`16 · D` values) and each `xs[p]` at least `8 · words.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn nibble_dot<const D: usize>(words: &[u32], cb: &[f32], xs: [&[f32]; D]) -> f32 {
    debug_assert!(cb.len() >= 16 * D);
    // Coordinate p of centroids 0..8 and 8..16.
    let mut lo = [_mm256_setzero_ps(); D];
    let mut hi = [_mm256_setzero_ps(); D];
    for p in 0..D {
        let mut col = [0f32; 16];
        for (c, v) in col.iter_mut().enumerate() {
            *v = cb[c * D + p];
        }
        lo[p] = _mm256_loadu_ps(col.as_ptr());
        hi[p] = _mm256_loadu_ps(col.as_ptr().add(8));
    }
    let shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
    let (fifteen, seven) = (_mm256_set1_epi32(15), _mm256_set1_epi32(7));
    let mut acc = [_mm256_setzero_ps(); D];
    for (k, &w) in words.iter().enumerate() {
        let idx = _mm256_and_si256(
            _mm256_srlv_epi32(_mm256_set1_epi32(w as i32), shifts),
            fifteen,
        );
        let upper = _mm256_castsi256_ps(_mm256_cmpgt_epi32(idx, seven));
        for p in 0..D {
            let c = _mm256_blendv_ps(
                _mm256_permutevar8x32_ps(lo[p], idx),
                _mm256_permutevar8x32_ps(hi[p], idx),
                upper,
            );
            acc[p] = _mm256_fmadd_ps(c, _mm256_loadu_ps(xs[p].as_ptr().add(8 * k)), acc[p]);
        }
    }
    let mut sum = _mm256_setzero_ps();
    for a in acc {
        sum = _mm256_add_ps(sum, a);
    }
    let s = _mm_add_ps(_mm256_castps256_ps128(sum), _mm256_extractf128_ps(sum, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
}

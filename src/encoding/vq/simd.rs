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
    // Gathered, not assembled in a stack array: eight scalar stores read
    // back as one vector stall store forwarding, once per span.
    let first = _mm256_setr_epi32(
        0,
        D as i32,
        2 * D as i32,
        3 * D as i32,
        4 * D as i32,
        5 * D as i32,
        6 * D as i32,
        7 * D as i32,
    );
    let second = _mm256_add_epi32(first, _mm256_set1_epi32(8 * D as i32));
    for p in 0..D {
        lo[p] = _mm256_i32gather_ps::<4>(cb.as_ptr().add(p), first);
        hi[p] = _mm256_i32gather_ps::<4>(cb.as_ptr().add(p), second);
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

/// Widest index [`packed_dot`] decodes: eight indices starting anywhere
/// in a word then lie in its first five words.
pub(super) const MAX_PACKED_BITS: u32 = 12;

/// `Σ_{v0 ≤ v < v1} Σ_p xs[p][v] · cb[idx(v)·D + p]` for indices of any
/// width up to [`MAX_PACKED_BITS`] packed in `words` (low bits first,
/// index `v` at bit `v · bits`), the codebooks that [`nibble_dot`] does
/// not take (3-bit 1D, 3-bit 2D, 2-bit 4D, ...). Eight indices at a time
/// come out of one 8-word load by two in-register word permutes and
/// variable shifts, so spans need not start on a word; centroids of
/// codebooks up to 8 entries are permuted from registers, larger ones
/// gathered. `words` may run past the row (reads stop 8 words early
/// otherwise, and the rest is summed one index at a time).
///
/// # Safety
/// The CPU must support AVX2 and FMA; `bits ≤ MAX_PACKED_BITS`, `cb`
/// holds `2^bits` centroids, `words` holds bits `0..v1 · bits` and each
/// `xs[p]` at least `v1` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn packed_dot<const D: usize>(
    words: &[u32],
    bits: u32,
    span: (usize, usize),
    cb: &[f32],
    xs: [&[f32]; D],
) -> f32 {
    debug_assert!(bits <= MAX_PACKED_BITS && cb.len() >= (D << bits));
    // The lookup chosen once, outside the loop.
    match bits <= 3 {
        true => packed_dot_with::<D, false>(words, bits, span, cb, xs),
        false => packed_dot_with::<D, true>(words, bits, span, cb, xs),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn packed_dot_with<const D: usize, const GATHER: bool>(
    words: &[u32],
    bits: u32,
    (v0, v1): (usize, usize),
    cb: &[f32],
    xs: [&[f32]; D],
) -> f32 {
    let k = 1usize << bits;
    // Coordinate p of up to 8 centroids, for the permute lookup.
    let mut small = [_mm256_setzero_ps(); D];
    if !GATHER {
        for (p, reg) in small.iter_mut().enumerate() {
            let mut col = [0f32; 8];
            for (c, v) in col.iter_mut().take(k).enumerate() {
                *v = cb[c * D + p];
            }
            *reg = _mm256_loadu_ps(col.as_ptr());
        }
    }
    let b = bits as i32;
    let lane_bits = _mm256_setr_epi32(0, b, 2 * b, 3 * b, 4 * b, 5 * b, 6 * b, 7 * b);
    let (mask, one, thirty_one, thirty_two) = (
        _mm256_set1_epi32((1 << bits) - 1),
        _mm256_set1_epi32(1),
        _mm256_set1_epi32(31),
        _mm256_set1_epi32(32),
    );
    let mut acc = [_mm256_setzero_ps(); D];
    let mut v = v0;
    while v + 8 <= v1 {
        let bit = v * bits as usize;
        let w0 = bit / 32;
        if w0 + 8 > words.len() {
            break;
        }
        let wv = _mm256_loadu_si256(words.as_ptr().add(w0) as *const __m256i);
        let rel = _mm256_add_epi32(_mm256_set1_epi32((bit % 32) as i32), lane_bits);
        let wi = _mm256_srli_epi32(rel, 5);
        let sh = _mm256_and_si256(rel, thirty_one);
        let lo = _mm256_srlv_epi32(_mm256_permutevar8x32_epi32(wv, wi), sh);
        // A shift by 32 gives 0: an index inside one word takes nothing
        // from the next.
        let hi = _mm256_sllv_epi32(
            _mm256_permutevar8x32_epi32(wv, _mm256_add_epi32(wi, one)),
            _mm256_sub_epi32(thirty_two, sh),
        );
        let idx = _mm256_and_si256(_mm256_or_si256(lo, hi), mask);
        // Centroid `idx` starts at value `idx · D` (D is 1, 2 or 4).
        let at = match D {
            1 => idx,
            2 => _mm256_add_epi32(idx, idx),
            _ => _mm256_slli_epi32::<2>(idx),
        };
        for p in 0..D {
            let c = match GATHER {
                false => _mm256_permutevar8x32_ps(small[p], idx),
                true => _mm256_i32gather_ps::<4>(cb.as_ptr().add(p), at),
            };
            acc[p] = _mm256_fmadd_ps(c, _mm256_loadu_ps(xs[p].as_ptr().add(v)), acc[p]);
        }
        v += 8;
    }
    let mut sum = _mm256_setzero_ps();
    for a in acc {
        sum = _mm256_add_ps(sum, a);
    }
    let s = _mm_add_ps(_mm256_castps256_ps128(sum), _mm256_extractf128_ps(sum, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let mut total = _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)));
    for v in v..v1 {
        let i = crate::encoding::affine::packing::unpack_code(words, bits, v) as usize;
        for (x, c) in xs.iter().zip(&cb[i * D..(i + 1) * D]) {
            total += x[v] * c;
        }
    }
    total
}

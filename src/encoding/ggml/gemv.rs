//! AVX2+FMA dot products of one row of llama.cpp blocks with f32
//! activations, decoding each block in registers: Q8_0, Q4_0 and Q4_1, the
//! types of most GGUF files' linears and of their heads. The GEMV of
//! [`super::GgmlTensor::matmul`] takes them where the CPU has AVX2 (the
//! other types, and other CPUs, dequantize the row into f32 first).
//!
//! Each block's codes widen to f32 lanes and meet `x` in FMAs; the block's
//! scale multiplies its lane sums once (`Σ d·q·x = d·Σ q·x`; Q4_1's min
//! adds `m·Σ x`). The sums run in another order than the dequantized row's
//! dot, so results agree with it to f32 rounding, not bit for bit
//! (`tests/matmul_ggml.rs`: within `1e-4 · Σ|w||x|`).

use super::GgmlType;

/// Whether [`row_dot`] takes `ty` on this CPU.
pub(super) fn supported(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q4_1) && crate::encoding::avx2_fma()
}

/// `Σ w·x` over one row of `ty` blocks (`row` whole blocks, `x` at least
/// as many values); the caller checked [`supported`].
pub(super) fn row_dot(ty: GgmlType, row: &[u8], x: &[f32]) -> f32 {
    let blocks = row.len() / ty.type_size();
    assert!(row.len() == blocks * ty.type_size() && x.len() >= blocks * 32 && supported(ty));
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `supported` checked AVX2 and FMA; the assert bounds every
    // load: block `b` reads `row[b·size..(b+1)·size]` and `x[32b..32b+32]`.
    unsafe {
        match ty {
            GgmlType::Q8_0 => q8_0(row, x, blocks),
            GgmlType::Q4_0 => q4(row, x, blocks, false),
            _ => q4(row, x, blocks, true),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("supported() is false off x86-64")
}

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn f16_at(row: &[u8], at: usize) -> f32 {
    half::f16::from_le_bytes([row[at], row[at + 1]]).to_f32()
}

#[cfg(target_arch = "x86_64")]
use crate::encoding::affine::simd::hsum;

/// `block_q8_0`: f16 d, 32 i8 codes; w = d·q.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn q8_0(row: &[u8], x: &[f32], blocks: usize) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for b in 0..blocks {
        let (p, xp) = (row.as_ptr().add(b * 34 + 2), x.as_ptr().add(32 * b));
        let mut s = _mm256_setzero_ps();
        for k in 0..4 {
            let q = _mm256_cvtepi8_epi32(_mm_loadl_epi64(p.add(8 * k).cast()));
            s = _mm256_fmadd_ps(_mm256_cvtepi32_ps(q), _mm256_loadu_ps(xp.add(8 * k)), s);
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(f16_at(row, b * 34)), s, acc);
    }
    hsum(acc)
}

/// `block_q4_0` (f16 d, 16 bytes: elements 0..16 in the low nibbles, 16..32
/// in the high ones; w = d·(q − 8)) and `block_q4_1` (f16 d, f16 m, the
/// same nibbles; w = d·q + m).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn q4(row: &[u8], x: &[f32], blocks: usize, with_min: bool) -> f32 {
    let size = if with_min { 20 } else { 18 };
    let codes_at = if with_min { 4 } else { 2 };
    let mask = _mm_set1_epi8(0x0f);
    let offset = _mm256_set1_epi32(if with_min { 0 } else { 8 });
    let (mut acc, mut acc_min) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    for b in 0..blocks {
        let (p, xp) = (row.as_ptr().add(b * size), x.as_ptr().add(32 * b));
        let v = _mm_loadu_si128(p.add(codes_at).cast());
        let lo = _mm_and_si128(v, mask);
        let hi = _mm_and_si128(_mm_srli_epi16(v, 4), mask);
        let parts = [lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)];
        let (mut s, mut sx) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        for (k, part) in parts.into_iter().enumerate() {
            let q = _mm256_sub_epi32(_mm256_cvtepu8_epi32(part), offset);
            let xv = _mm256_loadu_ps(xp.add(8 * k));
            s = _mm256_fmadd_ps(_mm256_cvtepi32_ps(q), xv, s);
            if with_min {
                sx = _mm256_add_ps(sx, xv);
            }
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(f16_at(row, b * size)), s, acc);
        if with_min {
            acc_min = _mm256_fmadd_ps(_mm256_set1_ps(f16_at(row, b * size + 2)), sx, acc_min);
        }
    }
    hsum(_mm256_add_ps(acc, acc_min))
}

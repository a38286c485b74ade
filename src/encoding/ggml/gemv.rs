//! AVX2+FMA GEMV of llama.cpp blocks with f32 activations, decoding each
//! block in registers: Q8_0, Q4_0, Q4_1, Q4_K and Q6_K, the types of most
//! GGUF files' linears and heads. [`super::GgmlTensor::matmul`] takes it
//! for fewer than `gemm::MIN_TOKENS` tokens where the CPU has AVX2, FMA
//! and F16C (other types and CPUs dequantize each row into f32 first).
//!
//! Codes widen to f32 lanes and meet `x` in FMAs; each scale multiplies
//! its lane sums once (`Σ d·q·x = d·Σ q·x`), and offsets and mins (Q4_0's
//! −8, Q4_1's m, Q4_K's dmin·m, Q6_K's −32) meet `Σx` of their block. The
//! 4- and 6-bit types load 32 code bytes per 256-bit register and take `x`
//! permuted into the nibbles' order ([`Nibbled`]), so codes unpack with
//! in-lane shifts and masks, no byte shuffles. [`ROWS`] rows at a time
//! share each load of `x` (Q6_K runs them one by one). The sums run in
//! another order than the dequantized row's dot, so results agree with it
//! to f32 rounding, not bit for bit (`tests/matmul_ggml.rs`: within
//! `1e-4 · Σ|w||x|`).

use super::GgmlType;
use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Rows per kernel call: four keep the codes, two accumulators per row and
/// the shared `x` within the 16 vector registers.
const ROWS: usize = 4;

/// Whether [`gemv`] takes `ty` on this CPU.
pub(super) fn supported(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::Q8_0
            | GgmlType::Q4_0
            | GgmlType::Q4_1
            | GgmlType::Q5_0
            | GgmlType::Q5_1
            | GgmlType::Q4K
            | GgmlType::Q6K
    ) && crate::encoding::avx2_fma_f16c()
}

/// `y = x · Wᵀ` (`[tokens, rows]`) for `rows` rows of `ty` blocks of
/// `cols` weights (`data`, whole rows) and `x` `[tokens, cols]`; the caller
/// checked [`supported`] and the sizes.
pub(super) fn gemv(
    ty: GgmlType,
    data: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    tokens: usize,
) -> Vec<f32> {
    let rb = super::tensor::row_bytes(ty, cols);
    assert!(supported(ty) && data.len() == rows * rb && x.len() == tokens * cols);
    let nibbled: Vec<Nibbled> = match ty {
        GgmlType::Q8_0 => Vec::new(),
        GgmlType::Q4K => x.chunks_exact(cols).map(Nibbled::q4_k).collect(),
        GgmlType::Q6K => x.chunks_exact(cols).map(Nibbled::q6_k).collect(),
        _ => x.chunks_exact(cols).map(Nibbled::legacy).collect(),
    };
    // A few jobs per thread for balance, none so small that scheduling shows.
    let per = rows
        .div_ceil(4 * rayon::current_num_threads())
        .max(64)
        .next_multiple_of(ROWS);
    let mut yt = vec![0f32; rows * tokens];
    let job = |(j, out): (usize, &mut [f32])| {
        let r0 = j * per;
        for (k, block) in out.chunks_mut(ROWS * tokens).enumerate() {
            let n = block.len() / tokens;
            let first = r0 + k * ROWS;
            // A short last block repeats its last row (results dropped).
            let row = |i: usize| {
                let r = first + i.min(n - 1);
                &data[r * rb..(r + 1) * rb]
            };
            let rows: [&[u8]; ROWS] = std::array::from_fn(row);
            // The next rows, a line at a time: rows of a few hundred bytes
            // are streams too short for the hardware prefetcher (SmolLM2's
            // Q8_0 decode read 5 GB/s without this).
            let next = (first + ROWS) * rb;
            prefetch(data.get(next..(next + ROWS * rb).min(data.len())));
            for t in 0..tokens {
                let sums = rows_dot(ty, rows, &x[t * cols..(t + 1) * cols], nibbled.get(t));
                for i in 0..n {
                    block[i * tokens + t] = sums[i];
                }
            }
        }
    };
    yt.par_chunks_mut(per * tokens).enumerate().for_each(job);
    crate::gemm::transpose(&yt, tokens, rows)
}

/// Asks for `bytes` in the cache, one request per 64-byte line.
fn prefetch(bytes: Option<&[u8]>) {
    #[cfg(target_arch = "x86_64")]
    for line in bytes.unwrap_or_default().chunks(64) {
        // SAFETY: SSE is part of x86-64; a prefetch never faults.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bytes;
}

fn rows_dot(ty: GgmlType, rows: [&[u8]; ROWS], x: &[f32], n: Option<&Nibbled>) -> [f32; ROWS] {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `gemv` checked AVX2, FMA and F16C (`supported`); the kernels
    // check every bound they load within.
    unsafe {
        match (ty, n) {
            (GgmlType::Q8_0, _) => q8_0(rows, x),
            (GgmlType::Q4_0, Some(p)) => legacy::<false, false>(rows, p),
            (GgmlType::Q4_1, Some(p)) => legacy::<true, false>(rows, p),
            (GgmlType::Q5_0, Some(p)) => legacy::<false, true>(rows, p),
            (GgmlType::Q5_1, Some(p)) => legacy::<true, true>(rows, p),
            (GgmlType::Q4K, Some(p)) => q4_k(rows, p),
            (GgmlType::Q6K, Some(p)) => q6_k(rows, p),
            (_, _) => unreachable!("{ty:?}: no kernel, or blocks without their permuted x"),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (ty, rows, x, n);
        unreachable!("supported() is false off x86-64")
    }
}

/// One token's `x` for the 4-bit kernels, per 64 weights: those whose
/// codes one 256-bit load of 32 code bytes holds.
struct Nibbled {
    /// `x` in nibble order: `perm[64c + 8k + j]` is the weight that
    /// nibble `k` of u32 lane `j` of chunk `c`'s 32 code bytes holds.
    perm: Vec<f32>,
    /// Σx per block of 32 as the kernel adds it: legacy types, a quarter of
    /// the sum of lane `j`'s block at `[8c + j]` (the four lanes of a block
    /// add up to its Σx); Q4_K, each sub-block's sum at `[8·super + sub]`;
    /// Q6_K, the sum of each 16 weights under one scale.
    sums: Vec<f32>,
    blocks: usize,
}

impl Nibbled {
    /// Q4_0/Q4_1: byte `i` of a block holds element `i` in its low nibble
    /// and `i + 16` in its high one; a chunk is two blocks side by side (the
    /// last of an odd count padded with a block of zeros).
    fn legacy(x: &[f32]) -> Self {
        let blocks = x.len() / 32;
        let chunks = blocks.div_ceil(2);
        let (mut perm, mut sums) = (vec![0f32; 64 * chunks], vec![0f32; 8 * chunks]);
        for b in 0..blocks {
            let (xb, half) = (&x[32 * b..32 * b + 32], 4 * (b % 2));
            for k in 0..8 {
                for l in 0..4 {
                    let element = 16 * (k % 2) + 4 * l + k / 2;
                    perm[64 * (b / 2) + 8 * k + half + l] = xb[element];
                }
            }
            let quarter = xb.iter().sum::<f32>() / 4.0;
            sums[8 * (b / 2) + half..][..4].fill(quarter);
        }
        Self { perm, sums, blocks }
    }

    /// Q4_K: byte `i` of a 32-byte chunk holds element `i` of the chunk's
    /// first sub-block in its low nibble and of its second in its high one,
    /// so even nibbles are the first sub-block and odd ones the second.
    fn q4_k(x: &[f32]) -> Self {
        let mut perm = vec![0f32; x.len()];
        for (c, xc) in x.chunks_exact(64).enumerate() {
            for k in 0..8 {
                for l in 0..8 {
                    perm[64 * c + 8 * k + l] = xc[32 * (k % 2) + 4 * l + k / 2];
                }
            }
        }
        let sums = x.chunks_exact(32).map(|b| b.iter().sum()).collect();
        Self {
            perm,
            sums,
            blocks: x.len() / 256,
        }
    }

    /// Q6_K: per half block of 128, two 32-byte chunks of low nibbles (A:
    /// byte `i` holds elements `i` and `i + 64`, B: `i + 32` and `i + 96`)
    /// and 32 bytes of high bit pairs; `perm` holds A's order, then B's.
    fn q6_k(x: &[f32]) -> Self {
        let mut perm = vec![0f32; x.len()];
        for (h, xh) in x.chunks_exact(128).enumerate() {
            for (chunk, base) in [0, 32].into_iter().enumerate() {
                for k in 0..8 {
                    for l in 0..8 {
                        perm[128 * h + 64 * chunk + 8 * k + l] =
                            xh[base + 64 * (k % 2) + 4 * l + k / 2];
                    }
                }
            }
        }
        let sums = x.chunks_exact(16).map(|g| g.iter().sum()).collect();
        Self {
            perm,
            sums,
            blocks: x.len() / 256,
        }
    }
}

/// `Σ c·x` of the 64 codes of each of `$v`'s rows (32 bytes each, in
/// nibble order) with the 64 values at `$xc`: even nibbles into `$s0`, odd
/// ones into `$s1`. Unrolled by hand: shift counts must be immediates.
/// Nibble 0 needs no shift and nibble 7 no mask.
#[cfg(target_arch = "x86_64")]
macro_rules! nibble_sums {
    ($v:ident, $xc:ident, $s0:ident, $s1:ident) => {
        nibble_sums!($v, $xc, $s0, $s1, |c, _i, _k| c);
    };
    // Q5_0/Q5_1: each code's fifth bit from `$qh[i]` (see [`fifth_bits`]).
    ($v:ident, $xc:ident, $s0:ident, $s1:ident, $qh:ident) => {
        nibble_sums!($v, $xc, $s0, $s1, |c, i, k| _mm256_or_si256(
            c,
            fifth_bits($qh[i], k)
        ));
    };
    ($v:ident, $xc:ident, $s0:ident, $s1:ident, |$c:ident, $i:ident, $k:ident| $code:expr) => {
        let m15 = _mm256_set1_epi32(15);
        macro_rules! nibble {
            ($n:literal, $acc:ident, $j:ident => $low:expr) => {
                let xk = _mm256_loadu_ps($xc.add(8 * $n));
                for $j in 0..ROWS {
                    let ($c, $i, $k) = ($low, $j, $n);
                    $acc[$j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps($code), xk, $acc[$j]);
                }
            };
        }
        // Nibble 0 needs no shift and nibble 7 no mask.
        nibble!(0, $s0, j => _mm256_and_si256($v[j], m15));
        nibble!(7, $s1, j => _mm256_srli_epi32::<28>($v[j]));
        nibble!(1, $s1, j => _mm256_and_si256(_mm256_srli_epi32::<4>($v[j]), m15));
        nibble!(2, $s0, j => _mm256_and_si256(_mm256_srli_epi32::<8>($v[j]), m15));
        nibble!(3, $s1, j => _mm256_and_si256(_mm256_srli_epi32::<12>($v[j]), m15));
        nibble!(4, $s0, j => _mm256_and_si256(_mm256_srli_epi32::<16>($v[j]), m15));
        nibble!(5, $s1, j => _mm256_and_si256(_mm256_srli_epi32::<20>($v[j]), m15));
        nibble!(6, $s0, j => _mm256_and_si256(_mm256_srli_epi32::<24>($v[j]), m15));
    };
}

/// Q5_0/Q5_1's fifth bits (`qh` bit `e` of element `e` of a block), moved
/// to bit 4 of the lanes nibble `k` of a pair's codes fills: lane `j`
/// holds element `16·(k mod 2) + 4·(j mod 4) + k/2` of its block, whose
/// `qh` word is in `qh`'s lane.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn fifth_bits(qh: __m256i, k: i32) -> __m256i {
    let e = |j: i32| 16 * (k % 2) + 4 * (j % 4) + k / 2;
    let at = _mm256_setr_epi32(e(0), e(1), e(2), e(3), e(4), e(5), e(6), e(7));
    let bit = _mm256_and_si256(_mm256_srlv_epi32(qh, at), _mm256_set1_epi32(1));
    _mm256_slli_epi32::<4>(bit)
}

/// Each row's eight lane sums added up.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn lane_sums(acc: [__m256; ROWS]) -> [f32; ROWS] {
    let mut out = [0f32; ROWS];
    for i in 0..ROWS {
        out[i] = crate::encoding::affine::simd::hsum(acc[i]);
    }
    out
}

/// The f16 at `p` as f32.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn f16_at(p: *const u8) -> f32 {
    let bits = p.cast::<u16>().read_unaligned();
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
}

/// The f16 at `p` as f32 in all eight lanes.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn broadcast_f16(p: *const u8) -> __m256 {
    _mm256_cvtph_ps(_mm_set1_epi16(p.cast::<i16>().read_unaligned()))
}

/// `block_q8_0`: f16 d, 32 i8 codes; w = d·q.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_0(rows: [&[u8]; ROWS], x: &[f32]) -> [f32; ROWS] {
    let blocks = x.len() / 32;
    for row in rows {
        assert!(row.len() >= 34 * blocks);
    }
    let mut acc = [_mm256_setzero_ps(); ROWS];
    for b in 0..blocks {
        let xp = x.as_ptr().add(32 * b);
        let mut s = [_mm256_setzero_ps(); ROWS];
        for k in 0..4 {
            let xk = _mm256_loadu_ps(xp.add(8 * k));
            for i in 0..ROWS {
                let codes = rows[i].as_ptr().add(34 * b + 2 + 8 * k);
                let q = _mm256_cvtepi8_epi32(_mm_loadl_epi64(codes.cast()));
                s[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(q), xk, s[i]);
            }
        }
        for i in 0..ROWS {
            acc[i] = _mm256_fmadd_ps(broadcast_f16(rows[i].as_ptr().add(34 * b)), s[i], acc[i]);
        }
    }
    lane_sums(acc)
}

/// The 32-weight types with 4-bit codes plus, when `FIVE`, a fifth bit
/// from a u32 `qh` before the codes: `block_q4_0` (f16 d, 16 code bytes;
/// w = d·(q − 8)) and `block_q5_0` (w = d·(q − 16)) when `MIN` is false,
/// `block_q4_1`/`block_q5_1` (f16 d, f16 m; w = d·q + m) when true. Per
/// pair of blocks: `d·(Σ q·x + c·Σx)` with c = −8 or −16, or `+ m·Σx`,
/// each block's scale in its four lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn legacy<const MIN: bool, const FIVE: bool>(
    rows: [&[u8]; ROWS],
    x: &Nibbled,
) -> [f32; ROWS] {
    let header = if MIN { 4 } else { 2 };
    let (size, codes_at) = if FIVE {
        (header + 20, header + 4)
    } else {
        (header + 16, header)
    };
    let blocks = x.blocks;
    let pairs = blocks.div_ceil(2);
    assert!(x.perm.len() >= 64 * pairs && x.sums.len() >= 8 * pairs);
    for row in rows {
        assert!(row.len() >= size * blocks);
    }
    // Lanes 0–3 take the first block's scale (or min), 4–7 the second's.
    let (first, second) = (_mm256_set1_epi32(0), _mm256_set1_epi32(2));
    let spread_first = _mm256_blend_epi32::<0xf0>(first, second);
    let spread_second = _mm256_add_epi32(spread_first, _mm256_set1_epi32(1));
    let mut acc = [_mm256_setzero_ps(); ROWS];
    for p in 0..pairs {
        let (a, both) = (2 * p, 2 * p + 1 < blocks);
        let mut v = [_mm256_setzero_si256(); ROWS];
        let mut qh = [_mm256_setzero_si256(); ROWS];
        let mut scales = [_mm256_setzero_ps(); ROWS];
        for i in 0..ROWS {
            let base = rows[i].as_ptr().add(a * size);
            let lo = _mm_loadu_si128(base.add(codes_at).cast());
            let h0 = base.cast::<u32>().read_unaligned();
            let (hi, h1) = if both {
                let next = base.add(size);
                (
                    _mm_loadu_si128(next.add(codes_at).cast()),
                    next.cast::<u32>().read_unaligned(),
                )
            } else {
                (_mm_setzero_si128(), 0)
            };
            v[i] = _mm256_set_m128i(hi, lo);
            // [d₀, m₀, d₁, m₁] as f32 (without a min, m is the next
            // bytes, unused).
            scales[i] = _mm256_cvtph_ps(_mm_set_epi32(0, 0, h1 as i32, h0 as i32));
            if FIVE {
                let qh_at = |b: *const u8| b.add(header).cast::<i32>().read_unaligned();
                let q1 = if both { qh_at(base.add(size)) } else { 0 };
                qh[i] = _mm256_setr_m128i(_mm_set1_epi32(qh_at(base)), _mm_set1_epi32(q1));
            }
        }
        let xc = x.perm.as_ptr().add(64 * p);
        let quarter = _mm256_loadu_ps(x.sums.as_ptr().add(8 * p));
        let start = match (MIN, FIVE) {
            (true, _) => _mm256_setzero_ps(),
            (false, false) => _mm256_mul_ps(quarter, _mm256_set1_ps(-8.0)),
            (false, true) => _mm256_mul_ps(quarter, _mm256_set1_ps(-16.0)),
        };
        let mut s0 = [start; ROWS];
        let mut s1 = [_mm256_setzero_ps(); ROWS];
        if FIVE {
            nibble_sums!(v, xc, s0, s1, qh);
        } else {
            nibble_sums!(v, xc, s0, s1);
        }
        for i in 0..ROWS {
            let d = _mm256_permutevar8x32_ps(scales[i], spread_first);
            acc[i] = _mm256_fmadd_ps(_mm256_add_ps(s0[i], s1[i]), d, acc[i]);
            if MIN {
                let m = _mm256_permutevar8x32_ps(scales[i], spread_second);
                acc[i] = _mm256_fmadd_ps(m, quarter, acc[i]);
            }
        }
    }
    lane_sums(acc)
}

/// `block_q4_K`: f16 d, f16 dmin, 12 bytes of 6-bit sub-block scales and
/// mins, 128 code bytes; sub-block `j` weighs d·sc_j·q − dmin·m_j. Per
/// 32-byte chunk (two sub-blocks) `d·sc·Σ q·x` for each, and per block of
/// 256 `Σ_j dmin·m_j·Σx_j` subtracted once.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_k(rows: [&[u8]; ROWS], x: &Nibbled) -> [f32; ROWS] {
    let blocks = x.blocks;
    assert!(x.perm.len() >= 256 * blocks && x.sums.len() >= 8 * blocks);
    for row in rows {
        assert!(row.len() >= 144 * blocks);
    }
    let mut acc = [_mm256_setzero_ps(); ROWS];
    let mut mins = [_mm256_setzero_ps(); ROWS];
    for b in 0..blocks {
        let mut scales = [[0f32; 8]; ROWS];
        let sums = _mm256_loadu_ps(x.sums.as_ptr().add(8 * b));
        for i in 0..ROWS {
            let block = &rows[i][144 * b..144 * b + 16];
            let (d, dmin) = (f16_at(block.as_ptr()), f16_at(block.as_ptr().add(2)));
            let mut packed = [0u8; 12];
            packed.copy_from_slice(&block[4..16]);
            let mut m = [0f32; 8];
            for j in 0..8 {
                let (sc, mj) = super::kquants::scale_min_k4(j, &packed);
                scales[i][j] = d * f32::from(sc);
                m[j] = dmin * f32::from(mj);
            }
            mins[i] = _mm256_fmadd_ps(_mm256_loadu_ps(m.as_ptr()), sums, mins[i]);
        }
        for c in 0..4 {
            let v: [__m256i; ROWS] = std::array::from_fn(|i| {
                _mm256_loadu_si256(rows[i].as_ptr().add(144 * b + 16 + 32 * c).cast())
            });
            let xc = x.perm.as_ptr().add(256 * b + 64 * c);
            let mut s0 = [_mm256_setzero_ps(); ROWS];
            let mut s1 = [_mm256_setzero_ps(); ROWS];
            nibble_sums!(v, xc, s0, s1);
            for i in 0..ROWS {
                acc[i] = _mm256_fmadd_ps(s0[i], _mm256_set1_ps(scales[i][2 * c]), acc[i]);
                acc[i] = _mm256_fmadd_ps(s1[i], _mm256_set1_ps(scales[i][2 * c + 1]), acc[i]);
            }
        }
    }
    for i in 0..ROWS {
        acc[i] = _mm256_sub_ps(acc[i], mins[i]);
    }
    lane_sums(acc)
}

/// One nibble of 8 Q6_K codes as f32 (before their −32): the low four
/// bits from `v` shifted right by `LO`, the high two from `vh` shifted
/// left by `HL` then right by `HR` into bits 4–5.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn q6_code<const LO: i32, const HL: i32, const HR: i32>(v: __m256i, vh: __m256i) -> __m256 {
    let lo = _mm256_and_si256(_mm256_srli_epi32::<LO>(v), _mm256_set1_epi32(15));
    let hi = _mm256_srli_epi32::<HR>(_mm256_slli_epi32::<HL>(vh));
    let hi = _mm256_and_si256(hi, _mm256_set1_epi32(0x30));
    _mm256_cvtepi32_ps(_mm256_or_si256(lo, hi))
}

/// `block_q6_K`: 128 bytes of low nibbles, 64 of high bit pairs, 16 i8
/// scales (one per 16 weights), f16 d; w = d·sc·(q − 32). Nibble `k` of a
/// low-nibble chunk finds its high pair at bit 4k of the bit-pair chunk
/// (A) or 4k + 2 (B). One row at a time: three code registers and four
/// accumulators per row leave no room to share `x` across rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6_k(rows: [&[u8]; ROWS], x: &Nibbled) -> [f32; ROWS] {
    let blocks = x.blocks;
    assert!(x.perm.len() >= 256 * blocks && x.sums.len() >= 16 * blocks);
    for row in rows {
        assert!(row.len() >= 210 * blocks);
    }
    // Lanes 0–3 and 4–7 of each sum take scales 16 weights apart: A's even
    // nibbles scales 0/1 of the half, A's odd 4/5, B's even 2/3, B's odd 6/7.
    let spread = [
        _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1),
        _mm256_setr_epi32(4, 4, 4, 4, 5, 5, 5, 5),
        _mm256_setr_epi32(2, 2, 2, 2, 3, 3, 3, 3),
        _mm256_setr_epi32(6, 6, 6, 6, 7, 7, 7, 7),
    ];
    let mut out = [0f32; ROWS];
    for (i, row) in rows.into_iter().enumerate() {
        let (mut acc, mut offsets) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        for b in 0..blocks {
            let block = row.as_ptr().add(210 * b);
            let d = _mm256_set1_ps(f16_at(block.add(208)));
            for h in 0..2 {
                let sc = scales_i8(block.add(192 + 8 * h));
                let sc = _mm256_mul_ps(sc, d);
                let sums = _mm256_loadu_ps(x.sums.as_ptr().add(16 * b + 8 * h));
                offsets = _mm256_fmadd_ps(sc, sums, offsets);
                let va = _mm256_loadu_si256(block.add(64 * h).cast());
                let vb = _mm256_loadu_si256(block.add(64 * h + 32).cast());
                let vh = _mm256_loadu_si256(block.add(128 + 32 * h).cast());
                let xa = x.perm.as_ptr().add(256 * b + 128 * h);
                let mut s = [_mm256_setzero_ps(); 4];
                macro_rules! nibble {
                    ($k:literal, $lo:literal, $hla:literal, $hra:literal, $hlb:literal, $hrb:literal) => {
                        let ca = q6_code::<$lo, $hla, $hra>(va, vh);
                        s[$k % 2] = _mm256_fmadd_ps(ca, _mm256_loadu_ps(xa.add(8 * $k)), s[$k % 2]);
                        let cb = q6_code::<$lo, $hlb, $hrb>(vb, vh);
                        let xb = _mm256_loadu_ps(xa.add(64 + 8 * $k));
                        s[2 + $k % 2] = _mm256_fmadd_ps(cb, xb, s[2 + $k % 2]);
                    };
                }
                nibble!(0, 0, 4, 0, 2, 0);
                nibble!(1, 4, 0, 0, 0, 2);
                nibble!(2, 8, 0, 4, 0, 6);
                nibble!(3, 12, 0, 8, 0, 10);
                nibble!(4, 16, 0, 12, 0, 14);
                nibble!(5, 20, 0, 16, 0, 18);
                nibble!(6, 24, 0, 20, 0, 22);
                nibble!(7, 28, 0, 24, 0, 26);
                for (q, idx) in spread.iter().enumerate() {
                    acc = _mm256_fmadd_ps(s[q], _mm256_permutevar8x32_ps(sc, *idx), acc);
                }
            }
        }
        // Σ d·sc·(q − 32)·x = Σ d·sc·q·x − 32·Σ d·sc·Σx.
        let total = _mm256_fnmadd_ps(_mm256_set1_ps(32.0), offsets, acc);
        out[i] = crate::encoding::affine::simd::hsum(total);
    }
    out
}

/// Eight i8 scales at `p` as f32.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn scales_i8(p: *const u8) -> __m256 {
    _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p.cast())))
}

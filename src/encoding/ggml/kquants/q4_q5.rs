//! ggml-common.h `block_q4_K` and `block_q5_K`: asymmetric 4- and 5-bit
//! codes in 32-weight sub-blocks whose scales and mins are 6-bit integers
//! of two f16 super-block scales; dequantized as `dequantize_row_q{4,5}_K`
//! and quantized as `quantize_row_q{4,5}_K_ref`.

use super::search::{make_qkx2_quants, make_qp_quants, nearest_int, Qkx2};
use super::{f16_bits, h, Block, Header, Quantize, QK_K};
use bytemuck::{Pod, Zeroable};

/// ggml-quants.c `get_scale_min_k4`: 6-bit scale and min of sub-block `j`
/// packed into 12 bytes.
pub(crate) fn scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// The inverse of [`scale_min_k4`] for all 8 sub-blocks.
fn pack_scale_min_k4(ls: &[u8; 8], lm: &[u8; 8]) -> [u8; 12] {
    let mut q = [0u8; 12];
    for j in 0..8 {
        if j < 4 {
            q[j] = ls[j];
            q[j + 4] = lm[j];
        } else {
            q[j + 4] = (ls[j] & 0xF) | ((lm[j] & 0xF) << 4);
            q[j - 4] |= (ls[j] >> 4) << 6;
            q[j] |= (lm[j] >> 4) << 6;
        }
    }
    q
}

/// What `quantize_row_q{4,5}_K_ref` share: each 32-weight sub-block's
/// (scale, min) by [`make_qkx2_quants`] weighted by `rms + |x|`, both as
/// 6-bit integers of `max/63`, then every code requantized in `0..=nmax`
/// against the stored values. Returns the header and the codes.
fn quantize_sub_blocks(x: &[f32], nmax: i32, p: &Qkx2) -> (Header, [u8; QK_K]) {
    let mut codes = [0u8; QK_K];
    let (mut scales, mut mins) = ([0f32; 8], [0f32; 8]);
    let (mut max_scale, mut max_min) = (0f32, 0f32);
    let mut weights = [0f32; 32];
    for j in 0..8 {
        let xs = &x[32 * j..32 * j + 32];
        let sum_x2 = xs.iter().fold(0f32, |s, &v| s + v * v);
        let av_x = (sum_x2 / 32.0).sqrt();
        for (w, &v) in weights.iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
        (scales[j], mins[j]) =
            make_qkx2_quants(nmax, xs, &weights, &mut codes[32 * j..32 * j + 32], p);
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    // `uint8_t ls = nearest_int(...)`: C truncates to 8 bits, then caps.
    let six = |v: f32| (nearest_int(v) as u8).min(63);
    let ls: [u8; 8] = std::array::from_fn(|j| six(inv_scale * scales[j]));
    let lm: [u8; 8] = std::array::from_fn(|j| six(inv_min * mins[j]));
    let (d, dmin) = (f16_bits(max_scale / 63.0), f16_bits(max_min / 63.0));
    for j in 0..8 {
        let (sc, m) = (ls[j], lm[j]);
        let dl = h(d) * f32::from(sc);
        if dl == 0.0 {
            continue;
        }
        let dm = h(dmin) * f32::from(m);
        for i in 32 * j..32 * j + 32 {
            codes[i] = nearest_int((x[i] + dm) / dl).clamp(0, nmax) as u8;
        }
    }
    let mut head = Header {
        d,
        dmin,
        ..Header::default()
    };
    head.sc[..8].copy_from_slice(&ls);
    head.m[..8].copy_from_slice(&lm);
    (head, codes)
}

/// ggml-common.h `block_q4_K`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct BlockQ4K {
    d: [u8; 2],
    dmin: [u8; 2],
    scales: [u8; 12],
    qs: [u8; QK_K / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ4K>() == 144);

/// `dequantize_row_q{4,5}_K`: sub-block pair `n` (64 weights) from byte
/// `l`'s low and high nibbles plus `fifth(n, l)` (the 16s of Q5_K's fifth
/// bit, for the pair's first and second sub-block), y = d·sc·q − dmin·m.
fn dequant_k(
    (d, dmin, scales): ([u8; 2], [u8; 2], &[u8; 12]),
    qs: &[u8; QK_K / 2],
    y: &mut [f32],
    fifth: impl Fn(usize, usize) -> (u8, u8),
) {
    let (d, min) = (h(d), h(dmin));
    for (n, (q, y)) in qs.chunks_exact(32).zip(y.chunks_exact_mut(64)).enumerate() {
        let (sc1, m1) = scale_min_k4(2 * n, scales);
        let (sc2, m2) = scale_min_k4(2 * n + 1, scales);
        let (d1, m1) = (d * f32::from(sc1), min * f32::from(m1));
        let (d2, m2) = (d * f32::from(sc2), min * f32::from(m2));
        for l in 0..32 {
            let (hi1, hi2) = fifth(n, l);
            y[l] = d1 * f32::from((q[l] & 0xF) + hi1) - m1;
            y[l + 32] = d2 * f32::from((q[l] >> 4) + hi2) - m2;
        }
    }
}

impl Block for BlockQ4K {
    const N: usize = QK_K;
    /// `dequantize_row_q4_K`: 8 sub-blocks of 32.
    fn dequant(&self, y: &mut [f32]) {
        dequant_k((self.d, self.dmin, &self.scales), &self.qs, y, |_, _| {
            (0, 0)
        });
    }
}

/// ggml-common.h `block_q5_K`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct BlockQ5K {
    d: [u8; 2],
    dmin: [u8; 2],
    scales: [u8; 12],
    qh: [u8; QK_K / 8],
    qs: [u8; QK_K / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ5K>() == 176);

impl Block for BlockQ5K {
    const N: usize = QK_K;
    /// `dequantize_row_q5_K`: as Q4_K with a fifth bit from `qh` (bits
    /// `2n` and `2n + 1` for sub-block pair `n`).
    fn dequant(&self, y: &mut [f32]) {
        let bit = |l: usize, b: usize| if self.qh[l] & (1 << b) != 0 { 16 } else { 0 };
        let fifth = |n: usize, l: usize| (bit(l, 2 * n), bit(l, 2 * n + 1));
        dequant_k((self.d, self.dmin, &self.scales), &self.qs, y, fifth);
    }
}

impl BlockQ4K {
    /// The block of header `h` (6-bit scales and mins in `sc`, `m`) and
    /// codes in `0..16`.
    pub(crate) fn pack(h: &Header, codes: &[u8]) -> Self {
        let mut qs = [0u8; QK_K / 2];
        for (q, l) in qs.chunks_exact_mut(32).zip(codes.chunks_exact(64)) {
            for i in 0..32 {
                q[i] = l[i] | (l[i + 32] << 4);
            }
        }
        Self {
            d: h.d,
            dmin: h.dmin,
            scales: pack_header_k4(h),
            qs,
        }
    }
}

/// `quantize_row_q{4,5}_K_impl`'s header (what `llama-quantize
/// --imatrix` stores) for one super-block `x` with importances `qw`
/// (`Σx²` of each input column, or GPTQ's `diag(H)`): each sub-block's
/// (scale, min) by the weighted search, then both sets as 6-bit integers
/// of one f16 scale each by [`make_qp_quants`], weighted by the
/// sub-blocks' total weight. Codes in `0..=nmax` (15 or 31).
pub(crate) fn fit_weighted(x: &[f32], qw: &[f32], nmax: i32) -> Header {
    let p = Qkx2 {
        rmin: -0.9,
        rdelta: 0.05,
        nstep: 36,
        use_mad: false,
    };
    let sigma2 = 2.0 * x.iter().fold(0f32, |s, &v| s + v * v) / QK_K as f32;
    let (mut scales, mut mins, mut sw) = ([0f32; 8], [0f32; 8], [0f32; 8]);
    let mut codes = [0u8; 32];
    for j in 0..8 {
        let (xs, q) = (&x[32 * j..32 * j + 32], &qw[32 * j..32 * j + 32]);
        let w: [f32; 32] = std::array::from_fn(|l| q[l] * (sigma2 + xs[l] * xs[l]).sqrt());
        sw[j] = w.iter().sum();
        (scales[j], mins[j]) = make_qkx2_quants(nmax, xs, &w, &mut codes, &p);
    }
    let mut h = Header::default();
    let d = make_qp_quants(63, &scales, &mut h.sc[..8], &sw);
    let m = make_qp_quants(63, &mins, &mut h.m[..8], &sw);
    (h.d, h.dmin) = (f16_bits(d), f16_bits(m));
    h
}

/// The 12 scale bytes of a Q4_K/Q5_K header.
fn pack_header_k4(h: &Header) -> [u8; 12] {
    let ls: [u8; 8] = std::array::from_fn(|j| h.sc[j]);
    let lm: [u8; 8] = std::array::from_fn(|j| h.m[j]);
    pack_scale_min_k4(&ls, &lm)
}

impl BlockQ5K {
    /// The block of header `h` and codes in `0..32`.
    pub(crate) fn pack(h: &Header, codes: &[u8]) -> Self {
        let (mut qs, mut qh) = ([0u8; QK_K / 2], [0u8; QK_K / 8]);
        for (n, (q, l)) in qs
            .chunks_exact_mut(32)
            .zip(codes.chunks_exact(64))
            .enumerate()
        {
            let (m1, m2) = (1u8 << (2 * n), 2u8 << (2 * n));
            for j in 0..32 {
                let (l1, l2) = (l[j], l[j + 32]);
                if l1 > 15 {
                    qh[j] |= m1;
                }
                if l2 > 15 {
                    qh[j] |= m2;
                }
                q[j] = (l1 & 0xF) | ((l2 & 0xF) << 4);
            }
        }
        Self {
            d: h.d,
            dmin: h.dmin,
            scales: pack_header_k4(h),
            qh,
            qs,
        }
    }
}

impl Quantize for BlockQ4K {
    /// `quantize_row_q4_K_ref`: 16 trial scales from `nmax − 1`.
    fn quantize(x: &[f32]) -> Self {
        let p = Qkx2 {
            rmin: -1.0,
            rdelta: 0.1,
            nstep: 20,
            use_mad: false,
        };
        let (head, codes) = quantize_sub_blocks(x, 15, &p);
        Self::pack(&head, &codes)
    }
}

impl Quantize for BlockQ5K {
    /// `quantize_row_q5_K_ref`: the fifth bit of sub-block pair `n` in
    /// bits `2n` and `2n + 1` of `qh`.
    fn quantize(x: &[f32]) -> Self {
        let p = Qkx2 {
            rmin: -0.5,
            rdelta: 0.1,
            nstep: 15,
            use_mad: false,
        };
        let (head, codes) = quantize_sub_blocks(x, 31, &p);
        Self::pack(&head, &codes)
    }
}

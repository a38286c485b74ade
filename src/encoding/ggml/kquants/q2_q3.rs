//! ggml-common.h `block_q2_K` and `block_q3_K`: 2-bit asymmetric and
//! 3-bit symmetric codes in 16-weight sub-blocks with 4- and 6-bit
//! sub-block scales; dequantized as `dequantize_row_q{2,3}_K` and
//! quantized as `quantize_row_q{2,3}_K_ref`.

use super::search::{
    make_q3_quants, make_qkx2_quants, make_qp_quants, make_qx_quants, nearest_int, Qkx2,
};
use super::{f16_bits, h, Block, Header, Quantize, QK_K};
use bytemuck::{Pod, Zeroable};

/// ggml-common.h `block_q2_K`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct BlockQ2K {
    /// Low nibble: the sub-block's scale, high nibble: its min.
    scales: [u8; QK_K / 16],
    qs: [u8; QK_K / 4],
    d: [u8; 2],
    dmin: [u8; 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ2K>() == 84);

/// The 2-bit codes of both k-quants: 256 codes as 2 halves of 128, byte
/// `l` of a half holding codes `l`, `l + 32`, `l + 64`, `l + 96` (low to
/// high bits).
fn pack_2bit(codes: &[u8; QK_K]) -> [u8; QK_K / 4] {
    let mut qs = [0u8; QK_K / 4];
    for (q, l) in qs.chunks_exact_mut(32).zip(codes.chunks_exact(128)) {
        for i in 0..32 {
            q[i] = l[i] | (l[i + 32] << 2) | (l[i + 64] << 4) | (l[i + 96] << 6);
        }
    }
    qs
}

/// Code `i` (0..256) of [`pack_2bit`]'s layout.
fn code_2bit(qs: &[u8; QK_K / 4], i: usize) -> u8 {
    let (half, within) = (i / 128, i % 128);
    (qs[32 * half + within % 32] >> (2 * (within / 32))) & 3
}

impl Block for BlockQ2K {
    const N: usize = QK_K;
    /// `dequantize_row_q2_K`: y = d·sc·q − dmin·m per 16-weight sub-block.
    fn dequant(&self, y: &mut [f32]) {
        let (d, min) = (h(self.d), h(self.dmin));
        for (j, y) in y.chunks_exact_mut(16).enumerate() {
            let sc = self.scales[j];
            let (dl, ml) = (d * f32::from(sc & 0xF), min * f32::from(sc >> 4));
            for (l, y) in y.iter_mut().enumerate() {
                *y = dl * f32::from(code_2bit(&self.qs, 16 * j + l)) - ml;
            }
        }
    }
}

impl BlockQ2K {
    /// The block of header `h` (4-bit scales and mins in `sc`, `m`) and
    /// codes in `0..4`.
    pub(crate) fn pack(h: &Header, codes: &[u8]) -> Self {
        let codes: &[u8; QK_K] = codes.try_into().expect("a super-block of codes");
        Self {
            scales: std::array::from_fn(|j| (h.sc[j] & 0xF) | (h.m[j] << 4)),
            qs: pack_2bit(codes),
            d: h.d,
            dmin: h.dmin,
        }
    }

    /// `quantize_row_q2_K_impl`'s header for importances `qw`: each
    /// 16-weight sub-block's (scale, min) by the weighted search, both
    /// sets as 4-bit integers by [`make_qp_quants`].
    pub(crate) fn fit_weighted(x: &[f32], qw: &[f32]) -> Header {
        let p = Qkx2 {
            rmin: -0.9,
            rdelta: 0.05,
            nstep: 36,
            use_mad: false,
        };
        let sigma2 = x.iter().fold(0f32, |s, &v| s + v * v) / QK_K as f32;
        let (mut scales, mut mins, mut sw) = ([0f32; 16], [0f32; 16], [0f32; 16]);
        let mut codes = [0u8; 16];
        for j in 0..16 {
            let (xs, q) = (&x[16 * j..16 * j + 16], &qw[16 * j..16 * j + 16]);
            let w: [f32; 16] = std::array::from_fn(|l| q[l] * (sigma2 + xs[l] * xs[l]).sqrt());
            sw[j] = w.iter().sum();
            (scales[j], mins[j]) = make_qkx2_quants(3, xs, &w, &mut codes, &p);
        }
        let mut h = Header::default();
        let d = make_qp_quants(15, &scales, &mut h.sc, &sw);
        let m = make_qp_quants(15, &mins, &mut h.m, &sw);
        (h.d, h.dmin) = (f16_bits(d), f16_bits(m));
        h
    }
}

impl Quantize for BlockQ2K {
    /// `quantize_row_q2_K_ref`: each sub-block's (scale, min) by
    /// [`make_qkx2_quants`] weighted by |x| with absolute errors, both as
    /// 4-bit integers of `max/15`, then the codes requantized.
    fn quantize(x: &[f32]) -> Self {
        const Q4SCALE: f32 = 15.0;
        let p = Qkx2 {
            rmin: -0.5,
            rdelta: 0.1,
            nstep: 15,
            use_mad: true,
        };
        let mut codes = [0u8; QK_K];
        let (mut scales, mut mins) = ([0f32; 16], [0f32; 16]);
        let (mut max_scale, mut max_min) = (0f32, 0f32);
        for j in 0..16 {
            let xs = &x[16 * j..16 * j + 16];
            let w: [f32; 16] = std::array::from_fn(|l| xs[l].abs());
            (scales[j], mins[j]) = make_qkx2_quants(3, xs, &w, &mut codes[16 * j..][..16], &p);
            if scales[j] > max_scale {
                max_scale = scales[j];
            }
            if mins[j] > max_min {
                max_min = mins[j];
            }
        }
        let mut y = Self::zeroed();
        // C stores `int l` into a uint8_t: truncation, as `as u8`.
        if max_scale > 0.0 {
            let iscale = Q4SCALE / max_scale;
            for (q, &s) in y.scales.iter_mut().zip(&scales) {
                *q = nearest_int(iscale * s) as u8;
            }
            y.d = f16_bits(max_scale / Q4SCALE);
        }
        if max_min > 0.0 {
            let iscale = Q4SCALE / max_min;
            for (q, &m) in y.scales.iter_mut().zip(&mins) {
                *q |= (nearest_int(iscale * m) << 4) as u8;
            }
            y.dmin = f16_bits(max_min / Q4SCALE);
        }
        for j in 0..16 {
            let d = h(y.d) * f32::from(y.scales[j] & 0xF);
            if d == 0.0 {
                continue;
            }
            let dm = h(y.dmin) * f32::from(y.scales[j] >> 4);
            for i in 16 * j..16 * j + 16 {
                codes[i] = nearest_int((x[i] + dm) / d).clamp(0, 3) as u8;
            }
        }
        y.qs = pack_2bit(&codes);
        y
    }
}

/// ggml-common.h `block_q3_K`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct BlockQ3K {
    /// The third bit: code `i` in bit `i / 32` of byte `i % 32`.
    hmask: [u8; QK_K / 8],
    qs: [u8; QK_K / 4],
    /// 16 six-bit scales: low nibbles in bytes 0..8 (sub-blocks 0..8 low,
    /// 8..16 high), the top 2 bits of scale `j` in byte `8 + j % 4` at
    /// bit `2·(j / 4)`.
    scales: [u8; 12],
    d: [u8; 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ3K>() == 110);

impl BlockQ3K {
    /// Scale `j` as stored, in `-32..32`.
    fn scale(&self, j: usize) -> i8 {
        let low = if j < 8 {
            self.scales[j] & 0xF
        } else {
            self.scales[j - 8] >> 4
        };
        let high = (self.scales[8 + j % 4] >> (2 * (j / 4))) & 3;
        (low | (high << 4)) as i8 - 32
    }
}

impl Block for BlockQ3K {
    const N: usize = QK_K;
    /// `dequantize_row_q3_K`: y = d·(sc − 32)·(q − 4), q = 2 low bits plus
    /// the hmask bit as 4.
    fn dequant(&self, y: &mut [f32]) {
        let d = h(self.d);
        for (j, y) in y.chunks_exact_mut(16).enumerate() {
            let dl = d * f32::from(self.scale(j));
            for (l, y) in y.iter_mut().enumerate() {
                let i = 16 * j + l;
                let high = (self.hmask[i % 32] >> (i / 32)) & 1;
                let q = code_2bit(&self.qs, i) as i8 - if high != 0 { 0 } else { 4 };
                *y = dl * f32::from(q);
            }
        }
    }
}

impl BlockQ3K {
    /// The block of header `h` (scales `sc` in `0..64`, i.e. scale + 32)
    /// and codes in `0..8` (q + 4).
    pub(crate) fn pack(h: &Header, codes: &[u8]) -> Self {
        let mut y = Self::zeroed();
        for (j, &l) in h.sc.iter().enumerate() {
            if j < 8 {
                y.scales[j] = l & 0xF;
            } else {
                y.scales[j - 8] |= (l & 0xF) << 4;
            }
            y.scales[j % 4 + 8] |= (l >> 4) << (2 * (j / 4));
        }
        y.d = h.d;
        let mut low = [0u8; QK_K];
        for (i, (c, &l)) in low.iter_mut().zip(codes).enumerate() {
            if l > 3 {
                y.hmask[i % 32] |= 1 << (i / 32);
            }
            *c = l & 3;
        }
        y.qs = pack_2bit(&low);
        y
    }

    /// `quantize_row_q3_K_impl`'s header for importances `qw`: each
    /// sub-block's symmetric scale by the weighted `make_qx_quants`, the
    /// scales as 6-bit integers by the same search weighted by the
    /// sub-blocks' total weight.
    pub(crate) fn fit_weighted(x: &[f32], qw: &[f32]) -> Header {
        let sigma2 = 2.0 * x.iter().fold(0f32, |s, &v| s + v * v) / QK_K as f32;
        let (mut scales, mut sw) = ([0f32; 16], [0f32; 16]);
        let mut codes = [0i8; 16];
        for j in 0..16 {
            let (xs, q) = (&x[16 * j..16 * j + 16], &qw[16 * j..16 * j + 16]);
            let w: [f32; 16] = std::array::from_fn(|l| q[l] * (sigma2 + xs[l] * xs[l]).sqrt());
            sw[j] = w.iter().sum();
            scales[j] = make_qx_quants(4, xs, &mut codes, Some(&w));
        }
        let mut ls = [0i8; 16];
        let d = make_qx_quants(32, &scales, &mut ls, Some(&sw));
        Header {
            d: f16_bits(d),
            sc: ls.map(|l| l as u8),
            ..Header::default()
        }
    }
}

impl Quantize for BlockQ3K {
    /// `quantize_row_q3_K_ref`: each sub-block's scale by
    /// [`make_q3_quants`], the scales as 6-bit integers of `max/−32`,
    /// then the codes requantized in `-4..4`.
    fn quantize(x: &[f32]) -> Self {
        let mut signed = [0i8; QK_K];
        let mut scales = [0f32; 16];
        let (mut max_scale, mut amax) = (0f32, 0f32);
        for (j, s) in scales.iter_mut().enumerate() {
            *s = make_q3_quants(4, &x[16 * j..16 * j + 16], &mut signed[16 * j..][..16]);
            if s.abs() > amax {
                (amax, max_scale) = (s.abs(), *s);
            }
        }
        let mut y = Self::zeroed();
        if max_scale != 0.0 {
            let iscale = -32.0 / max_scale;
            for (j, &s) in scales.iter().enumerate() {
                // `int8_t l = nearest_int(...)`, then clamped and offset.
                let l = ((nearest_int(iscale * s) as i8).clamp(-32, 31) + 32) as u8;
                if j < 8 {
                    y.scales[j] = l & 0xF;
                } else {
                    y.scales[j - 8] |= (l & 0xF) << 4;
                }
                y.scales[j % 4 + 8] |= (l >> 4) << (2 * (j / 4));
            }
            y.d = f16_bits(1.0 / iscale);
        }
        for j in 0..16 {
            let d = h(y.d) * f32::from(y.scale(j));
            if d == 0.0 {
                continue;
            }
            for i in 16 * j..16 * j + 16 {
                signed[i] = (nearest_int(x[i] / d).clamp(-4, 3) + 4) as i8;
            }
        }
        let mut codes = [0u8; QK_K];
        for (i, (c, &l)) in codes.iter_mut().zip(&signed).enumerate() {
            let l = l as u8;
            if l > 3 {
                y.hmask[i % 32] |= 1 << (i / 32);
            }
            *c = l & 3;
        }
        y.qs = pack_2bit(&codes);
        y
    }
}

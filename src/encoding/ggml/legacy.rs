//! llama.cpp's 32-weight block types (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1):
//! one f16 scale (and min) per block, codes packed as ggml-common.h lays
//! them out. Dequantization follows `dequantize_row_*` and quantization
//! `quantize_row_*_ref` of ggml-quants.c operation for operation, so both
//! match llama.cpp bit for bit.

use super::{f16_bits, h, Block, Quantize};
use bytemuck::{Pod, Zeroable};

/// ggml-common.h `block_q8_0`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(super) struct BlockQ8_0 {
    d: [u8; 2],
    qs: [i8; 32],
}
const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 34);

impl Block for BlockQ8_0 {
    const N: usize = 32;
    /// `dequantize_row_q8_0`: y = q·d.
    fn dequant(&self, y: &mut [f32]) {
        let d = h(self.d);
        for (y, &q) in y.iter_mut().zip(&self.qs) {
            *y = f32::from(q) * d;
        }
    }
}

/// ggml-common.h `block_q4_0`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(super) struct BlockQ4_0 {
    d: [u8; 2],
    qs: [u8; 16],
}
const _: () = assert!(std::mem::size_of::<BlockQ4_0>() == 18);

impl Quantize for BlockQ8_0 {
    /// `quantize_row_q8_0_ref`: d = max|x| / 127, q = round(x / d).
    fn quantize(x: &[f32]) -> Self {
        let d = signed_absmax(x).abs() / 127.0;
        let id = inverse(d);
        let mut qs = [0i8; 32];
        for (q, &v) in qs.iter_mut().zip(x) {
            *q = (v * id).round() as i8;
        }
        Self { d: f16_bits(d), qs }
    }
}

impl Block for BlockQ4_0 {
    const N: usize = 32;
    /// `dequantize_row_q4_0`: low nibbles are elements 0..16, high nibbles 16..32.
    fn dequant(&self, y: &mut [f32]) {
        let d = h(self.d);
        for (j, &q) in self.qs.iter().enumerate() {
            let x0 = i32::from(q & 0x0F) - 8;
            let x1 = i32::from(q >> 4) - 8;
            y[j] = x0 as f32 * d;
            y[j + 16] = x1 as f32 * d;
        }
    }
}

/// ggml-common.h `block_q4_1`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(super) struct BlockQ4_1 {
    d: [u8; 2],
    m: [u8; 2],
    qs: [u8; 16],
}
const _: () = assert!(std::mem::size_of::<BlockQ4_1>() == 20);

/// The value of largest magnitude (the first of equal magnitudes), as
/// `quantize_row_q4_0_ref` and `_q5_0_ref` pick it: its sign sets the
/// scale's, so it lands on the code that has no positive twin.
pub(super) fn signed_absmax(x: &[f32]) -> f32 {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

/// `(min, max)` of a block, `quantize_row_q4_1_ref`'s loop.
fn min_max(x: &[f32]) -> (f32, f32) {
    x.iter()
        .fold((f32::MAX, -f32::MAX), |(lo, hi), &v| (lo.min(v), hi.max(v)))
}

fn inverse(d: f32) -> f32 {
    if d != 0.0 {
        1.0 / d
    } else {
        0.0
    }
}

impl Quantize for BlockQ4_0 {
    /// `quantize_row_q4_0_ref`: d = max / −8, q = min(15, trunc(x/d + 8.5)).
    fn quantize(x: &[f32]) -> Self {
        let d = signed_absmax(x) / -8.0;
        let id = inverse(d);
        let mut qs = [0u8; 16];
        for (j, q) in qs.iter_mut().enumerate() {
            let q0 = ((x[j] * id + 8.5) as i8).min(15) as u8;
            let q1 = ((x[j + 16] * id + 8.5) as i8).min(15) as u8;
            *q = q0 | (q1 << 4);
        }
        Self { d: f16_bits(d), qs }
    }
}

impl Block for BlockQ4_1 {
    const N: usize = 32;
    /// `dequantize_row_q4_1`: y = q·d + m.
    fn dequant(&self, y: &mut [f32]) {
        let d = h(self.d);
        let m = h(self.m);
        for (j, &q) in self.qs.iter().enumerate() {
            y[j] = f32::from(q & 0x0F) * d + m;
            y[j + 16] = f32::from(q >> 4) * d + m;
        }
    }
}

impl Quantize for BlockQ4_1 {
    /// `quantize_row_q4_1_ref`: d = (max − min) / 15, m = min,
    /// q = min(15, trunc((x − min)/d + 0.5)).
    fn quantize(x: &[f32]) -> Self {
        let (min, max) = min_max(x);
        let d = (max - min) / 15.0;
        let id = inverse(d);
        let mut qs = [0u8; 16];
        for (j, q) in qs.iter_mut().enumerate() {
            let q0 = (((x[j] - min) * id + 0.5) as i8).min(15) as u8;
            let q1 = (((x[j + 16] - min) * id + 0.5) as i8).min(15) as u8;
            *q = q0 | (q1 << 4);
        }
        Self {
            d: f16_bits(d),
            m: f16_bits(min),
            qs,
        }
    }
}

/// ggml-common.h `block_q5_0`: the fifth bit of element j is bit j of `qh`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(super) struct BlockQ5_0 {
    d: [u8; 2],
    qh: [u8; 4],
    qs: [u8; 16],
}
const _: () = assert!(std::mem::size_of::<BlockQ5_0>() == 22);

/// ggml-common.h `block_q5_1`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(super) struct BlockQ5_1 {
    d: [u8; 2],
    m: [u8; 2],
    qh: [u8; 4],
    qs: [u8; 16],
}
const _: () = assert!(std::mem::size_of::<BlockQ5_1>() == 24);

/// Codes 0..32 of a 5-bit block from its `qs` nibbles and `qh` bits.
fn unpack5(qs: &[u8; 16], qh: [u8; 4]) -> [u8; 32] {
    let qh = u32::from_le_bytes(qh);
    let mut q = [0u8; 32];
    for j in 0..16 {
        q[j] = (qs[j] & 0x0F) | ((((qh >> j) << 4) & 0x10) as u8);
        q[j + 16] = (qs[j] >> 4) | (((qh >> (j + 12)) & 0x10) as u8);
    }
    q
}

/// Inverse of [`unpack5`].
fn pack5(q: &[u8; 32]) -> ([u8; 16], [u8; 4]) {
    let (mut qs, mut qh) = ([0u8; 16], 0u32);
    for j in 0..16 {
        qs[j] = (q[j] & 0x0F) | ((q[j + 16] & 0x0F) << 4);
        qh |= u32::from((q[j] & 0x10) >> 4) << j;
        qh |= u32::from((q[j + 16] & 0x10) >> 4) << (j + 16);
    }
    (qs, qh.to_le_bytes())
}

impl Block for BlockQ5_0 {
    const N: usize = 32;
    /// `dequantize_row_q5_0`: y = (q − 16)·d.
    fn dequant(&self, y: &mut [f32]) {
        let d = h(self.d);
        for (y, q) in y.iter_mut().zip(unpack5(&self.qs, self.qh)) {
            *y = (i32::from(q) - 16) as f32 * d;
        }
    }
}

impl Quantize for BlockQ5_0 {
    /// `quantize_row_q5_0_ref`: d = max / −16, q = min(31, trunc(x/d + 16.5)).
    fn quantize(x: &[f32]) -> Self {
        let d = signed_absmax(x) / -16.0;
        let id = inverse(d);
        let mut q = [0u8; 32];
        for (q, &v) in q.iter_mut().zip(x) {
            *q = ((v * id + 16.5) as i8).min(31) as u8;
        }
        let (qs, qh) = pack5(&q);
        Self {
            d: f16_bits(d),
            qh,
            qs,
        }
    }
}

impl Block for BlockQ5_1 {
    const N: usize = 32;
    /// `dequantize_row_q5_1`: y = q·d + m.
    fn dequant(&self, y: &mut [f32]) {
        let (d, m) = (h(self.d), h(self.m));
        for (y, q) in y.iter_mut().zip(unpack5(&self.qs, self.qh)) {
            *y = f32::from(q) * d + m;
        }
    }
}

impl Quantize for BlockQ5_1 {
    /// `quantize_row_q5_1_ref`: d = (max − min) / 31, m = min,
    /// q = trunc((x − min)/d + 0.5).
    fn quantize(x: &[f32]) -> Self {
        let (min, max) = min_max(x);
        let d = (max - min) / 31.0;
        let id = inverse(d);
        let mut q = [0u8; 32];
        for (q, &v) in q.iter_mut().zip(x) {
            *q = ((v - min) * id + 0.5) as u8;
        }
        let (qs, qh) = pack5(&q);
        Self {
            d: f16_bits(d),
            m: f16_bits(min),
            qh,
            qs,
        }
    }
}

/// `codes` (32, unsigned: Q8_0's `q + 128`, Q4_0's `q + 8`, Q5_0's `q + 16`)
/// with the block scale `d` and, for Q4_1/Q5_1, the min `m` (f16 bits) as
/// a block of `ty`, one of the legacy types.
pub(super) fn pack(ty: super::GgmlType, d: [u8; 2], m: [u8; 2], codes: &[u8]) -> Vec<u8> {
    use super::GgmlType as T;
    let q: [u8; 32] = std::array::from_fn(|j| codes[j]);
    let nibbles =
        |q: &[u8; 32]| -> [u8; 16] { std::array::from_fn(|j| (q[j] & 0xF) | (q[j + 16] << 4)) };
    match ty {
        T::Q8_0 => bytemuck::bytes_of(&BlockQ8_0 {
            d,
            qs: std::array::from_fn(|j| (i32::from(q[j]) - 128) as i8),
        })
        .to_vec(),
        T::Q4_0 => bytemuck::bytes_of(&BlockQ4_0 { d, qs: nibbles(&q) }).to_vec(),
        T::Q4_1 => bytemuck::bytes_of(&BlockQ4_1 {
            d,
            m,
            qs: nibbles(&q),
        })
        .to_vec(),
        T::Q5_0 => {
            let (qs, qh) = pack5(&q);
            bytemuck::bytes_of(&BlockQ5_0 { d, qh, qs }).to_vec()
        }
        _ => {
            let (qs, qh) = pack5(&q);
            bytemuck::bytes_of(&BlockQ5_1 { d, m, qh, qs }).to_vec()
        }
    }
}

/// One 32-weight group of linear integer codes (`w = s·(q − z)`, `s`
/// already f16-exact) as the block of `ty`: Q4_0, Q5_0 and Q8_0 hold
/// symmetric codes exactly (`z` = 8, 16, 128, `d = s`); Q4_1 and Q5_1
/// store `d = s` and the min `−s·z` rounded to f16, the one change.
pub(super) fn affine_block(ty: super::GgmlType, codes: &[u32], s: f32, z: u8) -> Vec<u8> {
    let q: [u8; 32] = std::array::from_fn(|j| codes[j] as u8);
    pack(ty, f16_bits(s), f16_bits(-s * f32::from(z)), &q)
}

/// `quantize_row_{q4_0,q4_1,q5_0,q5_1}_impl`'s block scale (and min) for
/// importances `qw`, the f16 bits of `(d, m)`: Q4_0/Q5_0 by the weighted
/// `make_qx_quants`, Q4_1/Q5_1 by the weighted `make_qkx3_quants`, with
/// weights `qw·sqrt(σ² + x²)`. Upstream takes `σ²` over the whole row; a
/// block fitted alone takes it over the block. Q8_0 has no weighted
/// quantizer upstream: its reference scale.
pub(super) fn fit_weighted(ty: super::GgmlType, x: &[f32], qw: &[f32]) -> ([u8; 2], [u8; 2]) {
    use super::kquants::search::{make_qkx2_quants, make_qx_quants, Qkx2};
    use super::GgmlType as T;
    let sigma2 = x.iter().fold(0f32, |s, &v| s + v * v) / x.len() as f32;
    let w: [f32; 32] = std::array::from_fn(|j| qw[j] * (sigma2 + x[j] * x[j]).sqrt());
    let p = Qkx2 {
        rmin: -0.9,
        rdelta: 0.05,
        nstep: 36,
        use_mad: false,
    };
    let (mut signed, mut codes) = ([0i8; 32], [0u8; 32]);
    match ty {
        T::Q4_0 => (
            f16_bits(make_qx_quants(8, x, &mut signed, Some(&w))),
            [0; 2],
        ),
        T::Q5_0 => (
            f16_bits(make_qx_quants(16, x, &mut signed, Some(&w))),
            [0; 2],
        ),
        T::Q4_1 | T::Q5_1 => {
            let nmax = if ty == T::Q4_1 { 15 } else { 31 };
            let (d, min) = make_qkx2_quants(nmax, x, &w, &mut codes, &p);
            (f16_bits(d), f16_bits(-min))
        }
        _ => (f16_bits(signed_absmax(x).abs() / 127.0), [0; 2]),
    }
}

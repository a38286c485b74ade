//! llama.cpp's k-quants (256-weight super-blocks of 16- or 32-weight
//! sub-blocks with 6- or 8-bit sub-block scales), dequantized as
//! ggml-quants.c `dequantize_row_q{4,5,6}_K`.

use super::{h, Block, QK_K};
use bytemuck::{Pod, Zeroable};

/// ggml-quants.c `get_scale_min_k4`: 6-bit scale and min of sub-block `j`
/// packed into 12 bytes.
fn scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// ggml-common.h `block_q4_K`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(super) struct BlockQ4K {
    d: [u8; 2],
    dmin: [u8; 2],
    scales: [u8; 12],
    qs: [u8; QK_K / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ4K>() == 144);

impl Block for BlockQ4K {
    const N: usize = QK_K;
    /// `dequantize_row_q4_K`: 8 sub-blocks of 32, y = d·sc·q − dmin·m.
    fn dequant(&self, y: &mut [f32]) {
        let d = h(self.d);
        let min = h(self.dmin);
        for (n, (q, y)) in self
            .qs
            .chunks_exact(32)
            .zip(y.chunks_exact_mut(64))
            .enumerate()
        {
            let (sc1, m1) = scale_min_k4(2 * n, &self.scales);
            let (sc2, m2) = scale_min_k4(2 * n + 1, &self.scales);
            let (d1, m1) = (d * f32::from(sc1), min * f32::from(m1));
            let (d2, m2) = (d * f32::from(sc2), min * f32::from(m2));
            for l in 0..32 {
                y[l] = d1 * f32::from(q[l] & 0xF) - m1;
                y[l + 32] = d2 * f32::from(q[l] >> 4) - m2;
            }
        }
    }
}

/// ggml-common.h `block_q5_K`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(super) struct BlockQ5K {
    d: [u8; 2],
    dmin: [u8; 2],
    scales: [u8; 12],
    qh: [u8; QK_K / 8],
    qs: [u8; QK_K / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ5K>() == 176);

impl Block for BlockQ5K {
    const N: usize = QK_K;
    /// `dequantize_row_q5_K`: as Q4_K with a fifth bit from `qh`.
    fn dequant(&self, y: &mut [f32]) {
        let d = h(self.d);
        let min = h(self.dmin);
        for (n, (ql, y)) in self
            .qs
            .chunks_exact(32)
            .zip(y.chunks_exact_mut(64))
            .enumerate()
        {
            let (sc1, m1) = scale_min_k4(2 * n, &self.scales);
            let (sc2, m2) = scale_min_k4(2 * n + 1, &self.scales);
            let (d1, m1) = (d * f32::from(sc1), min * f32::from(m1));
            let (d2, m2) = (d * f32::from(sc2), min * f32::from(m2));
            let u1 = 1u8 << (2 * n);
            let u2 = 2u8 << (2 * n);
            for l in 0..32 {
                let hi1 = if self.qh[l] & u1 != 0 { 16 } else { 0 };
                let hi2 = if self.qh[l] & u2 != 0 { 16 } else { 0 };
                y[l] = d1 * f32::from((ql[l] & 0xF) + hi1) - m1;
                y[l + 32] = d2 * f32::from((ql[l] >> 4) + hi2) - m2;
            }
        }
    }
}

/// ggml-common.h `block_q6_K`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(super) struct BlockQ6K {
    ql: [u8; QK_K / 2],
    qh: [u8; QK_K / 4],
    scales: [i8; QK_K / 16],
    d: [u8; 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ6K>() == 210);

impl Block for BlockQ6K {
    const N: usize = QK_K;
    /// `dequantize_row_q6_K`: two halves of 128, each value 4 low bits from
    /// `ql` and 2 high bits from `qh`, minus 32, times d·scale.
    fn dequant(&self, y: &mut [f32]) {
        let d = h(self.d);
        for half in 0..2 {
            let ql = &self.ql[64 * half..];
            let qh = &self.qh[32 * half..];
            let sc = &self.scales[8 * half..];
            let y = &mut y[128 * half..];
            for l in 0..32 {
                let is = l / 16;
                let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i8 - 32;
                let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
                let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
                let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
                y[l] = d * f32::from(sc[is]) * f32::from(q1);
                y[l + 32] = d * f32::from(sc[is + 2]) * f32::from(q2);
                y[l + 64] = d * f32::from(sc[is + 4]) * f32::from(q3);
                y[l + 96] = d * f32::from(sc[is + 6]) * f32::from(q4);
            }
        }
    }
}

//! Dequantization of ggml blocks to f32, following llama.cpp
//! ggml/src/ggml-quants.c `dequantize_row_*` operation for operation so
//! that results match upstream bit for bit. Block layouts are the
//! `block_*` structs of ggml-common.h; f16 fields are kept as raw bytes so
//! every struct has alignment 1 and can be cast from any file offset.

use super::types::GgmlType;
use bytemuck::{Pod, Zeroable};
use half::{bf16, f16};
use rayon::prelude::*;

/// Elements per super-block of the k-quants (QK_K).
const QK_K: usize = 256;
/// Blocks handed to one rayon task: keeps task overhead small.
const BLOCKS_PER_TASK: usize = 64;

fn h(b: [u8; 2]) -> f32 {
    f16::from_le_bytes(b).to_f32()
}

/// A quantized block: `N` weights in `size_of::<Self>()` bytes.
trait Block: Pod + Sync {
    const N: usize;
    fn dequant(&self, y: &mut [f32]);
}

/// ggml-common.h `block_q8_0`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct BlockQ8_0 {
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
struct BlockQ4_0 {
    d: [u8; 2],
    qs: [u8; 16],
}
const _: () = assert!(std::mem::size_of::<BlockQ4_0>() == 18);

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
struct BlockQ4_1 {
    d: [u8; 2],
    m: [u8; 2],
    qs: [u8; 16],
}
const _: () = assert!(std::mem::size_of::<BlockQ4_1>() == 20);

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
struct BlockQ4K {
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
struct BlockQ5K {
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
struct BlockQ6K {
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

fn blocks<B: Block>(bytes: &[u8], n: usize) -> Option<Vec<f32>> {
    let blocks: &[B] = bytemuck::try_cast_slice(bytes).ok()?;
    if blocks.len() * B::N != n {
        return None;
    }
    let mut out = vec![0f32; n];
    out.par_chunks_mut(B::N * BLOCKS_PER_TASK)
        .zip(blocks.par_chunks(BLOCKS_PER_TASK))
        .for_each(|(y, bs)| {
            for (y, b) in y.chunks_exact_mut(B::N).zip(bs) {
                b.dequant(y);
            }
        });
    Some(out)
}

/// Element-wise types: `W` bytes per value.
fn scalars<const W: usize>(bytes: &[u8], n: usize, f: fn([u8; W]) -> f32) -> Option<Vec<f32>> {
    if bytes.len() != n * W {
        return None;
    }
    let mut out = vec![0f32; n];
    out.par_chunks_mut(4096)
        .zip(bytes.par_chunks(4096 * W))
        .for_each(|(y, b)| {
            for (y, b) in y.iter_mut().zip(b.chunks_exact(W)) {
                let mut a = [0u8; W];
                a.copy_from_slice(b);
                *y = f(a);
            }
        });
    Some(out)
}

/// `n` elements of type `ty` from `bytes` as f32. `None` when the type is
/// not one of [`GgmlType::dequantizable`] or the byte count is wrong
/// (callers check both first and turn them into errors).
pub fn dequantize(ty: GgmlType, bytes: &[u8], n: usize) -> Option<Vec<f32>> {
    match ty {
        GgmlType::F32 => scalars::<4>(bytes, n, f32::from_le_bytes),
        GgmlType::F16 => scalars::<2>(bytes, n, |b| f16::from_le_bytes(b).to_f32()),
        GgmlType::Bf16 => scalars::<2>(bytes, n, |b| bf16::from_le_bytes(b).to_f32()),
        GgmlType::Q8_0 => blocks::<BlockQ8_0>(bytes, n),
        GgmlType::Q4_0 => blocks::<BlockQ4_0>(bytes, n),
        GgmlType::Q4_1 => blocks::<BlockQ4_1>(bytes, n),
        GgmlType::Q4K => blocks::<BlockQ4K>(bytes, n),
        GgmlType::Q5K => blocks::<BlockQ5K>(bytes, n),
        GgmlType::Q6K => blocks::<BlockQ6K>(bytes, n),
        _ => None,
    }
}

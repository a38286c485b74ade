//! llama.cpp's k-quants (256-weight super-blocks of 16- or 32-weight
//! sub-blocks with 6- or 8-bit sub-block scales), dequantized as
//! ggml-quants.c `dequantize_row_q{4,5,6}_K`; Q6_K also quantized as
//! `quantize_row_q6_K_ref`.

use super::{f16_bits, h, Block, Quantize, QK_K};
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

/// ggml-quants.c `GROUP_MAX_EPS`: a block whose largest value is below it
/// is all zero.
const GROUP_MAX_EPS: f32 = 1e-15;

/// ggml-quants.c `nearest_int`: round half to even by adding 1.5·2²³
/// (valid for |v| ≤ 2²², as there).
fn nearest_int(v: f32) -> i32 {
    let t = v + 12582912.0;
    (t.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// ggml-quants.c `make_qx_quants` with `rmse_type` 1 and no imatrix:
/// codes `L` in `0..2·nmax` of the symmetric scale that, over 19 trial
/// scales around `max / −nmax`, maximises `(Σ w·x·l)² / Σ w·l²` with
/// `w = x²`; returns that scale.
fn make_qx_quants(nmax: i32, x: &[f32], codes: &mut [i8]) -> f32 {
    let max = super::legacy::signed_absmax(x);
    if max.abs() < GROUP_MAX_EPS {
        codes.iter_mut().for_each(|l| *l = 0);
        return 0.0;
    }
    let code = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    let sums = |iscale: f32| {
        let (mut sumlx, mut suml2) = (0f32, 0f32);
        for &v in x {
            let (l, w) = (code(iscale, v) as f32, v * v);
            sumlx += w * v * l;
            suml2 += w * l * l;
        }
        (sumlx, suml2)
    };
    let iscale = -(nmax as f32) / max;
    for (l, &v) in codes.iter_mut().zip(x) {
        *l = (code(iscale, v) + nmax) as i8;
    }
    let (sumlx, suml2) = sums(iscale);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in (-9..=9).filter(|&is| is != 0) {
        let iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        let (sumlx, suml2) = sums(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (l, &v) in codes.iter_mut().zip(x) {
                *l = (code(iscale, v) + nmax) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

impl Quantize for BlockQ6K {
    /// `quantize_row_q6_K_ref`: each 16-weight sub-block's scale by
    /// [`make_qx_quants`], the scales as int8 of `d = max_scale / −128`,
    /// then the codes requantized against the stored scales.
    fn quantize(x: &[f32]) -> Self {
        let mut codes = [0i8; QK_K];
        let mut scales = [0f32; QK_K / 16];
        let (mut max_scale, mut max_abs) = (0f32, 0f32);
        for (ib, sc) in scales.iter_mut().enumerate() {
            *sc = make_qx_quants(
                32,
                &x[16 * ib..16 * ib + 16],
                &mut codes[16 * ib..16 * ib + 16],
            );
            if sc.abs() > max_abs {
                max_abs = sc.abs();
                max_scale = *sc;
            }
        }
        let mut y = Self::zeroed();
        if max_abs < GROUP_MAX_EPS {
            return y;
        }
        let iscale = -128.0 / max_scale;
        y.d = f16_bits(1.0 / iscale);
        for (q, &sc) in y.scales.iter_mut().zip(&scales) {
            *q = nearest_int(iscale * sc).min(127) as i8;
        }
        for j in 0..QK_K / 16 {
            let d = h(y.d) * f32::from(y.scales[j]);
            // A zero scale keeps make_qx_quants' codes, as upstream.
            if d == 0.0 {
                continue;
            }
            for i in 16 * j..16 * j + 16 {
                codes[i] = (nearest_int(x[i] / d).clamp(-32, 31) + 32) as i8;
            }
        }
        for half in 0..2 {
            let (l0, ql, qh) = (128 * half, 64 * half, 32 * half);
            for l in 0..32 {
                let q = |k: usize| codes[l0 + l + 32 * k] as u8;
                y.ql[ql + l] = (q(0) & 0xF) | ((q(2) & 0xF) << 4);
                y.ql[ql + l + 32] = (q(1) & 0xF) | ((q(3) & 0xF) << 4);
                y.qh[qh + l] =
                    (q(0) >> 4) | ((q(1) >> 4) << 2) | ((q(2) >> 4) << 4) | ((q(3) >> 4) << 6);
            }
        }
        y
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Q6_K keeps 6 bits a weight: a round trip stays within a fraction
    /// of each sub-block's step, a zero block stays zero, and codes sit in
    /// `0..64`. (Bit-exactness against llama-quantize is checked by
    /// scripts/llama-cpp-check.sh.)
    #[test]
    fn q6_k_round_trips() {
        let x: Vec<f32> = (0..QK_K)
            .map(|i| ((i * 7919) % 257) as f32 / 64.0 - 2.0)
            .collect();
        let b = BlockQ6K::quantize(&x);
        let mut y = vec![0f32; QK_K];
        b.dequant(&mut y);
        let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
        for (a, w) in x.iter().zip(&y) {
            assert!((a - w).abs() <= amax / 32.0, "{a} vs {w}");
        }
        let z = BlockQ6K::quantize(&[0f32; QK_K]);
        z.dequant(&mut y);
        assert!(y.iter().all(|&v| v == 0.0));
        assert_eq!(nearest_int(2.5), 2);
        assert_eq!(nearest_int(-3.5), -4);
    }
}

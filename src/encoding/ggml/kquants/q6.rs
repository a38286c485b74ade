//! ggml-common.h `block_q6_K`: 6-bit symmetric codes in 16-weight
//! sub-blocks with int8 scales, quantized as `quantize_row_q6_K_ref`.

use super::search::{make_qx_quants, nearest_int, GROUP_MAX_EPS};
use super::{f16_bits, h, Block, Header, Quantize, QK_K};
use bytemuck::{Pod, Zeroable};

/// ggml-common.h `block_q6_K`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct BlockQ6K {
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

impl BlockQ6K {
    /// The block of header `h` (int8 scales in `sc`, as their bits) and
    /// codes in `0..64` (q + 32).
    pub(crate) fn pack(h: &Header, codes: &[u8]) -> Self {
        let mut y = Self::zeroed();
        y.d = h.d;
        y.scales = std::array::from_fn(|j| h.sc[j] as i8);
        for half in 0..2 {
            let (l0, ql, qh) = (128 * half, 64 * half, 32 * half);
            for l in 0..32 {
                let q = |k: usize| codes[l0 + l + 32 * k];
                y.ql[ql + l] = (q(0) & 0xF) | ((q(2) & 0xF) << 4);
                y.ql[ql + l + 32] = (q(1) & 0xF) | ((q(3) & 0xF) << 4);
                y.qh[qh + l] =
                    (q(0) >> 4) | ((q(1) >> 4) << 2) | ((q(2) >> 4) << 4) | ((q(3) >> 4) << 6);
            }
        }
        y
    }

    /// `quantize_row_q6_K_impl`'s header for importances `qw`: each
    /// sub-block's scale by `make_qx_quants` weighted by `qw` itself (as
    /// upstream), the scales as int8 of `max_scale / −128`.
    pub(crate) fn fit_weighted(x: &[f32], qw: &[f32]) -> Header {
        header(x, Some(qw), &mut [0; QK_K]).unwrap_or_default()
    }
}

/// What `quantize_row_q6_K_ref` and `_impl` share: each 16-weight
/// sub-block's scale by [`make_qx_quants`] (weighted by `qw`, else `x²`),
/// whose codes are left in `codes`, then the scales as int8 of
/// `d = max_scale / −128`; `None` for an all-zero block.
fn header(x: &[f32], qw: Option<&[f32]>, codes: &mut [i8; QK_K]) -> Option<Header> {
    let mut scales = [0f32; QK_K / 16];
    let (mut max_scale, mut max_abs) = (0f32, 0f32);
    for (ib, sc) in scales.iter_mut().enumerate() {
        let at = 16 * ib..16 * ib + 16;
        *sc = make_qx_quants(
            32,
            &x[at.clone()],
            &mut codes[at.clone()],
            qw.map(|q| &q[at]),
        );
        if sc.abs() > max_abs {
            max_abs = sc.abs();
            max_scale = *sc;
        }
    }
    if max_abs < GROUP_MAX_EPS {
        return None;
    }
    let iscale = -128.0 / max_scale;
    let mut h = Header {
        d: f16_bits(1.0 / iscale),
        ..Header::default()
    };
    for (q, &sc) in h.sc.iter_mut().zip(&scales) {
        *q = nearest_int(iscale * sc).min(127) as i8 as u8;
    }
    Some(h)
}

impl Quantize for BlockQ6K {
    /// `quantize_row_q6_K_ref`: [`header`] without importances, then the
    /// codes requantized against the stored scales.
    fn quantize(x: &[f32]) -> Self {
        let mut codes = [0i8; QK_K];
        let Some(head) = header(x, None, &mut codes) else {
            return Self::zeroed();
        };
        for j in 0..QK_K / 16 {
            let d = h(head.d) * f32::from(head.sc[j] as i8);
            // A zero scale keeps make_qx_quants' codes, as upstream.
            if d == 0.0 {
                continue;
            }
            for i in 16 * j..16 * j + 16 {
                codes[i] = (nearest_int(x[i] / d).clamp(-32, 31) + 32) as i8;
            }
        }
        Self::pack(&head, &codes.map(|c| c as u8))
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
    }
}

//! ggml-common.h `block_iq4_nl`: 32 weights as 4-bit indices into a fixed
//! non-uniform grid (`kvalues_iq4nl`, denser near zero, as weights are)
//! times one f16 scale; quantized as `quantize_iq4_nl` does without an
//! imatrix, which is what `llama-quantize` runs (`quantize_row_iq4_nl_ref`
//! skips the scale search and is not what files are made with).

use super::kquants::search::GROUP_MAX_EPS;
use super::{f16_bits, h, Block, Quantize};
use bytemuck::{Pod, Zeroable};

/// ggml-common.h `kvalues_iq4nl`.
pub(crate) const KVALUES_IQ4NL: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// ggml-common.h `block_iq4_nl`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct BlockIq4Nl {
    d: [u8; 2],
    /// Low nibbles: weights 0..16, high nibbles: 16..32.
    qs: [u8; 16],
}
const _: () = assert!(std::mem::size_of::<BlockIq4Nl>() == 18);

impl Block for BlockIq4Nl {
    const N: usize = 32;
    /// `dequantize_row_iq4_nl`.
    fn dequant(&self, y: &mut [f32]) {
        let d = h(self.d);
        for (j, &q) in self.qs.iter().enumerate() {
            y[j] = d * f32::from(KVALUES_IQ4NL[usize::from(q & 0xF)]);
            y[j + 16] = d * f32::from(KVALUES_IQ4NL[usize::from(q >> 4)]);
        }
    }
}

/// ggml-quants.c `best_index_int8`: the index of the grid value nearest
/// to `x` (ties to the upper one).
pub(crate) fn best_index(values: &[i8; 16], x: f32) -> usize {
    if x <= f32::from(values[0]) {
        return 0;
    }
    if x >= f32::from(values[15]) {
        return 15;
    }
    let (mut ml, mut mu) = (0, 15);
    while mu - ml > 1 {
        let mav = (ml + mu) / 2;
        if x < f32::from(values[mav]) {
            mu = mav;
        } else {
            ml = mav;
        }
    }
    if x - f32::from(values[mu - 1]) < f32::from(values[mu]) - x {
        mu - 1
    } else {
        mu
    }
}

/// `Σ w·q·x` and `Σ w·q²` of `x`'s nearest grid values at inverse scale `id`.
fn fit(x: &[f32], w: &[f32], id: f32) -> (f32, f32) {
    let (mut sumqx, mut sumq2) = (0f32, 0f32);
    for (&v, &w) in x.iter().zip(w) {
        let q = f32::from(KVALUES_IQ4NL[best_index(&KVALUES_IQ4NL, id * v)]);
        sumqx += w * q * v;
        sumq2 += w * q * q;
    }
    (sumqx, sumq2)
}

/// `quantize_row_iq4_nl_impl`'s scale for one 32-weight block with
/// weights `w` and `ntry` 7: the least-squares scale of the grid codes
/// over 15 trial scales `max / (values[0] + t)`.
fn search_scale(x: &[f32], w: &[f32]) -> f32 {
    const NTRY: i32 = 7;
    let v0 = f32::from(KVALUES_IQ4NL[0]);
    let max = super::legacy::signed_absmax(x);
    if max.abs() < GROUP_MAX_EPS {
        return 0.0;
    }
    let (sumqx, sumq2) = fit(x, w, 1.0 / (-max / v0));
    let mut d = if sumq2 > 0.0 { sumqx / sumq2 } else { 0.0 };
    let mut best = d * sumqx;
    for itry in -NTRY..=NTRY {
        let (sumqx, sumq2) = fit(x, w, (itry as f32 + v0) / max);
        if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
            d = sumqx / sumq2;
            best = d * sumqx;
        }
    }
    d
}

impl BlockIq4Nl {
    /// The block of scale `d` (f16 bits) and grid indices `codes`.
    pub(crate) fn pack(d: [u8; 2], codes: &[u8]) -> Self {
        Self {
            d,
            qs: std::array::from_fn(|j| codes[j] | (codes[j + 16] << 4)),
        }
    }

    /// `quantize_iq4_nl`'s scale with importances `qw` (what
    /// `llama-quantize --imatrix` stores): the search weighted by
    /// `qw·sqrt(σ² + x²)`, `σ² = 2·mean(x²)`.
    pub(crate) fn fit_weighted(x: &[f32], qw: &[f32]) -> [u8; 2] {
        let sigma2 = 2.0 * x.iter().fold(0f32, |s, &v| s + v * v) / 32.0;
        let w: [f32; 32] = std::array::from_fn(|j| qw[j] * (sigma2 + x[j] * x[j]).sqrt());
        f16_bits(search_scale(x, &w))
    }
}

impl Quantize for BlockIq4Nl {
    /// `quantize_row_iq4_nl_impl` with one 32-weight block, weights `x²`
    /// and `ntry` 7 ([`search_scale`]), then every code nearest to `x / d`
    /// (d before its f16 rounding, as upstream).
    fn quantize(x: &[f32]) -> Self {
        let w: [f32; 32] = std::array::from_fn(|j| x[j] * x[j]);
        let d = search_scale(x, &w);
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let l: [u8; 32] = std::array::from_fn(|j| best_index(&KVALUES_IQ4NL, id * x[j]) as u8);
        Self::pack(f16_bits(d), &l)
    }
}

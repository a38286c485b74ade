//! The block types as a grid of values: what GPTQ needs to choose a block's
//! codes itself. Each block is a [`Header`] (its f16 scales and integer
//! sub-block scales) and one code per weight; a weight's value is fixed by
//! its sub-block's `(step, min)` ([`sub_values`]) and its code
//! ([`Rounding`]). [`fit_weighted`] chooses the header as `llama-quantize
//! --imatrix` does (importances: GPTQ's `diag(H)`), [`pack`] stores any
//! header and codes as the type's bytes. Each type's layout and search
//! stay in its module; this file only dispatches.

use super::iq4_nl::{BlockIq4Nl, KVALUES_IQ4NL};
use super::kquants::{fit_weighted_k, BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K};
use super::{h, legacy, GgmlType};

/// A block's stored scales, whatever its type uses of them: `d` and
/// `dmin` as f16 bits (Q4_1/Q5_1 keep their min `m` in `dmin`), and the
/// integer scale (`sc`) and min (`m`) of each sub-block as stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Header {
    pub d: [u8; 2],
    pub dmin: [u8; 2],
    pub sc: [u8; 16],
    pub m: [u8; 16],
}

/// How a weight's code maps to its value under its sub-block's
/// `(step, min)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rounding {
    /// `value = step·q − min`, `q` in `0..=max`.
    Affine { max: u32 },
    /// `value = step·(q + lo)`, `q + lo` in `lo..=hi`.
    Symmetric { lo: i32, hi: i32 },
    /// `value = step·KVALUES[q]` (IQ4_NL's non-uniform grid).
    Table,
}

/// The geometry of a block type's codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Weights per sub-block (one `(step, min)`).
    pub sub: usize,
    /// Sub-blocks per block (fitted together).
    pub subs: usize,
    /// Bits of one code.
    pub bits: u32,
    pub rounding: Rounding,
}

/// Every type with a [`layout`]: what GPTQ rounds onto.
pub const GRID_TYPES: [GgmlType; 11] = [
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q5_0,
    GgmlType::Q4_1,
    GgmlType::Q5_1,
    GgmlType::Iq4Nl,
    GgmlType::Q2K,
    GgmlType::Q3K,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
];

/// The layout of `ty`, `None` for types GPTQ cannot round onto (float
/// types and types llmq-gpu does not write).
pub fn layout(ty: GgmlType) -> Option<Layout> {
    use GgmlType as T;
    use Rounding::{Affine, Symmetric, Table};
    let (sub, subs, bits, rounding) = match ty {
        T::Q8_0 => (32, 1, 8, Symmetric { lo: -128, hi: 127 }),
        T::Q4_0 => (32, 1, 4, Symmetric { lo: -8, hi: 7 }),
        T::Q5_0 => (32, 1, 5, Symmetric { lo: -16, hi: 15 }),
        T::Q4_1 => (32, 1, 4, Affine { max: 15 }),
        T::Q5_1 => (32, 1, 5, Affine { max: 31 }),
        T::Iq4Nl => (32, 1, 4, Table),
        T::Q2K => (16, 16, 2, Affine { max: 3 }),
        T::Q3K => (16, 16, 3, Symmetric { lo: -4, hi: 3 }),
        T::Q4K => (32, 8, 4, Affine { max: 15 }),
        T::Q5K => (32, 8, 5, Affine { max: 31 }),
        T::Q6K => (16, 16, 6, Symmetric { lo: -32, hi: 31 }),
        _ => return None,
    };
    Some(Layout {
        sub,
        subs,
        bits,
        rounding,
    })
}

/// `(step, min)` of sub-block `j` under `head`, computed as the type's
/// dequantization computes them (same f32 operations).
pub(crate) fn sub_values(ty: GgmlType, head: &Header, j: usize) -> (f32, f32) {
    use GgmlType as T;
    let (d, dmin) = (h(head.d), h(head.dmin));
    let (sc, m) = (f32::from(head.sc[j]), f32::from(head.m[j]));
    match ty {
        T::Q4_1 | T::Q5_1 => (d, -dmin),
        T::Q2K | T::Q4K | T::Q5K => (d * sc, dmin * m),
        T::Q3K => (d * f32::from(head.sc[j] as i8 - 32), 0.0),
        T::Q6K => (d * f32::from(head.sc[j] as i8), 0.0),
        _ => (d, 0.0),
    }
}

/// The code of `x` (nearest value) and its value under `(step, min)`.
pub fn round(rounding: Rounding, x: f32, step: f32, min: f32) -> (u32, f32) {
    let nearest = |v: f32| super::kquants::search::nearest_int(v.clamp(-4.0e6, 4.0e6));
    match rounding {
        Rounding::Affine { max } => {
            if step == 0.0 {
                return (0, -min);
            }
            let q = nearest((x + min) / step).clamp(0, max as i32);
            (q as u32, step * q as f32 - min)
        }
        Rounding::Symmetric { lo, hi } => {
            let l = if step == 0.0 {
                0
            } else {
                nearest(x / step).clamp(lo, hi)
            };
            ((l - lo) as u32, step * l as f32)
        }
        Rounding::Table => {
            let q = if step == 0.0 {
                super::iq4_nl::best_index(&KVALUES_IQ4NL, 0.0)
            } else {
                super::iq4_nl::best_index(&KVALUES_IQ4NL, x / step)
            };
            (q as u32, step * f32::from(KVALUES_IQ4NL[q]))
        }
    }
}

/// The header `llama-quantize --imatrix` chooses for one block `x` of
/// `ty` with importances `qw` (`None` for types without a [`layout`]).
pub(crate) fn fit_weighted(ty: GgmlType, x: &[f32], qw: &[f32]) -> Option<Header> {
    use GgmlType as T;
    let mut head = Header::default();
    match ty {
        T::Q8_0 | T::Q4_0 | T::Q5_0 | T::Q4_1 | T::Q5_1 => {
            (head.d, head.dmin) = legacy::fit_weighted(ty, x, qw);
        }
        T::Iq4Nl => head.d = BlockIq4Nl::fit_weighted(x, qw),
        T::Q2K => head = BlockQ2K::fit_weighted(x, qw),
        T::Q3K => head = BlockQ3K::fit_weighted(x, qw),
        T::Q4K => head = fit_weighted_k(x, qw, 15),
        T::Q5K => head = fit_weighted_k(x, qw, 31),
        T::Q6K => head = BlockQ6K::fit_weighted(x, qw),
        _ => return None,
    }
    Some(head)
}

/// One block of `ty` from its header and codes (`layout(ty)`'s codes,
/// one per weight), as stored; empty for types without a [`layout`].
pub(crate) fn pack(ty: GgmlType, head: &Header, codes: &[u8]) -> Vec<u8> {
    use GgmlType as T;
    match ty {
        T::Q8_0 | T::Q4_0 | T::Q5_0 | T::Q4_1 | T::Q5_1 => {
            legacy::pack(ty, head.d, head.dmin, codes)
        }
        T::Iq4Nl => bytemuck::bytes_of(&BlockIq4Nl::pack(head.d, codes)).to_vec(),
        T::Q2K => bytemuck::bytes_of(&BlockQ2K::pack(head, codes)).to_vec(),
        T::Q3K => bytemuck::bytes_of(&BlockQ3K::pack(head, codes)).to_vec(),
        T::Q4K => bytemuck::bytes_of(&BlockQ4K::pack(head, codes)).to_vec(),
        T::Q5K => bytemuck::bytes_of(&BlockQ5K::pack(head, codes)).to_vec(),
        T::Q6K => bytemuck::bytes_of(&BlockQ6K::pack(head, codes)).to_vec(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// For every type: the weighted fit's header with the nearest codes
    /// packs into a block whose reference dequantization is exactly the
    /// values [`round`] reports, and those stay near the weights.
    #[test]
    fn fitted_blocks_dequantize_to_the_rounded_values() {
        for ty in GRID_TYPES {
            let l = layout(ty).unwrap();
            let n = l.sub * l.subs;
            let x: Vec<f32> = (0..n)
                .map(|i| (((i * 7919 + 13) % 211) as f32 / 105.0 - 1.0) * 0.05)
                .collect();
            let qw: Vec<f32> = (0..n).map(|i| 0.5 + (i % 7) as f32 * 0.25).collect();
            let head = fit_weighted(ty, &x, &qw).unwrap();
            let (mut codes, mut values) = (vec![0u8; n], vec![0f32; n]);
            for (i, &v) in x.iter().enumerate() {
                let (step, min) = sub_values(ty, &head, i / l.sub);
                let (q, value) = round(l.rounding, v, step, min);
                assert!(q < 1 << l.bits, "{ty:?}: code {q}");
                (codes[i], values[i]) = (q as u8, value);
            }
            let bytes = pack(ty, &head, &codes);
            assert_eq!(bytes.len(), ty.type_size(), "{ty:?}");
            let y = super::super::dequantize(ty, &bytes, n).unwrap();
            assert_eq!(y, values, "{ty:?}");
            let err = x
                .iter()
                .zip(&y)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            let bound = 0.1 / f32::powi(2.0, l.bits as i32 - 1);
            assert!(err <= bound, "{ty:?}: error {err} over {bound}");
        }
    }
}

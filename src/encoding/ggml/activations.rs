//! How llama.cpp's CPU backend rounds the activations of a matmul: before
//! a weight of type `ty` is multiplied, the input rows are converted to the
//! type's `vec_dot_type` (ggml-cpu.c `type_traits_cpu`): q8_0 blocks for
//! Q4_0, Q5_0, Q8_0 and IQ4_NL (q8_1 for Q4_1/Q5_1, the same rounding),
//! q8_K super-blocks for the k-quants, f16/bf16 for F16/BF16 weights, none
//! for F32. `eval --llama-cpp-activations` applies the same rounding so
//! that a file can be scored as llama.cpp runs it (the products are then
//! llama.cpp's up to the f32 summation order).

use super::kquants::search::nearest_int;
use super::GgmlType;
use half::{bf16, f16};

/// The activation type llama.cpp converts a matmul's input to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActivationRounding {
    /// 32-value blocks of int8 with an f16 scale (`quantize_row_q8_0`).
    Q8_0,
    /// 256-value blocks of int8 with an f32 scale (`quantize_row_q8_K`).
    Q8K,
    F16,
    Bf16,
}

/// The rounding llama.cpp's CPU backend applies to the input of a matmul
/// with weights of `ty`; `None` for F32 (and types it has no kernel for here).
pub fn activation_rounding(ty: GgmlType) -> Option<ActivationRounding> {
    use GgmlType as T;
    Some(match ty {
        T::Q4_0 | T::Q4_1 | T::Q5_0 | T::Q5_1 | T::Q8_0 | T::Iq4Nl => ActivationRounding::Q8_0,
        T::Q2K | T::Q3K | T::Q4K | T::Q5K | T::Q6K => ActivationRounding::Q8K,
        T::F16 => ActivationRounding::F16,
        T::Bf16 => ActivationRounding::Bf16,
        _ => return None,
    })
}

/// Rounds every row of `x` (rows of `cols` values) as llama.cpp converts
/// them to `r`, in place. `cols` must be a multiple of the block (32 or
/// 256) for the integer types, as the weight's rows are.
pub fn round_activations(r: ActivationRounding, x: &mut [f32]) {
    match r {
        ActivationRounding::F16 => x.iter_mut().for_each(|v| *v = f16::from_f32(*v).to_f32()),
        ActivationRounding::Bf16 => x.iter_mut().for_each(|v| *v = bf16::from_f32(*v).to_f32()),
        // The AVX2 `quantize_row_q8_0` (what the x86 builds run): scale
        // `amax / 127` stored as f16, codes `round_half_even(x · 127 / amax)`.
        ActivationRounding::Q8_0 => {
            for b in x.chunks_mut(32) {
                let amax = b.iter().fold(0f32, |m, v| m.max(v.abs()));
                let d = f16::from_f32(amax / 127.0).to_f32();
                let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
                b.iter_mut()
                    .for_each(|v| *v = d * (*v * id).round_ties_even());
            }
        }
        // `quantize_row_q8_K`: the value of largest magnitude maps to −127.
        ActivationRounding::Q8K => {
            for b in x.chunks_mut(256) {
                let (mut amax, mut max) = (0f32, 0f32);
                for &v in b.iter() {
                    if v.abs() > amax {
                        (amax, max) = (v.abs(), v);
                    }
                }
                if amax == 0.0 {
                    b.iter_mut().for_each(|v| *v = 0.0);
                    continue;
                }
                let iscale = -127.0 / max;
                let d = 1.0 / iscale;
                b.iter_mut()
                    .for_each(|v| *v = d * nearest_int(iscale * *v).min(127) as f32);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activations_round_onto_their_grids() {
        let x: Vec<f32> = (0..256).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        for r in [ActivationRounding::Q8_0, ActivationRounding::Q8K] {
            let mut y = x.clone();
            round_activations(r, &mut y);
            let step = 3.0 / 127.0;
            for (a, b) in x.iter().zip(&y) {
                assert!((a - b).abs() <= 0.51 * step + 1e-3, "{r:?}: {a} vs {b}");
            }
        }
        let mut z = vec![0f32; 32];
        round_activations(ActivationRounding::Q8_0, &mut z);
        assert!(z.iter().all(|&v| v == 0.0));
        assert_eq!(activation_rounding(GgmlType::F32), None);
    }
}

//! What a linear quantization is: bit width, symmetry and granularity.
//!
//! Codes are always unsigned, `0..=2^bits-1`, and dequantize as
//! `w = scale * (q - zero)`. Symmetric schemes fix `zero = 2^(bits-1)`
//! ([`symmetric_zero`]: the GPTQ convention, which the GPTQ checkpoint
//! layout stores) and take llama.cpp's Q4_0 scale rule (the scale may be
//! negative); asymmetric ones choose the zero per group from the range.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// Which weights share one scale/zero pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Granularity {
    /// One pair for the whole tensor.
    PerTensor,
    /// One pair per output channel (row).
    PerChannel,
    /// One pair per `n` consecutive weights of a row (along the input
    /// dimension). When `n` does not divide the row, the last group is
    /// shorter (GPTQ's convention: weight `j` is in group `j / n`).
    Group(usize),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuantScheme {
    pub bits: u32,
    pub symmetric: bool,
    pub granularity: Granularity,
}

impl QuantScheme {
    pub fn new(bits: u32, symmetric: bool, granularity: Granularity) -> Result<Self> {
        if !(2..=8).contains(&bits) {
            return Err(Error::Config(format!(
                "bits must be between 2 and 8, got {bits}"
            )));
        }
        if let Granularity::Group(0) = granularity {
            return Err(Error::Config("group size must be positive".into()));
        }
        Ok(Self {
            bits,
            symmetric,
            granularity,
        })
    }

    /// Largest code, `2^bits - 1`.
    pub fn max_code(&self) -> u32 {
        (1 << self.bits) - 1
    }

    /// Weights per scale/zero pair along a row of `cols` weights (the last
    /// group of a row may be shorter).
    pub fn group_len(&self, cols: usize) -> usize {
        match self.granularity {
            Granularity::Group(g) => g.min(cols),
            Granularity::PerTensor | Granularity::PerChannel => cols,
        }
    }

    /// Scale/zero pairs per row of `cols` weights.
    pub fn groups_per_row(&self, cols: usize) -> usize {
        cols.div_ceil(self.group_len(cols).max(1))
    }

    /// Checks that the scheme fits a `[rows, cols]` weight and names the tensor if not.
    pub fn check_shape(&self, name: &str, rows: usize, cols: usize) -> Result<()> {
        if rows == 0 || cols == 0 {
            return Err(Error::BadTensor {
                name: name.into(),
                msg: format!("empty shape [{rows}, {cols}]"),
            });
        }
        Ok(())
    }

    /// Errors, naming the tensor, if the group size leaves a shorter last
    /// group; for users and runtimes that need every group full.
    pub fn check_groups_divide(&self, name: &str, cols: usize) -> Result<()> {
        match self.granularity {
            Granularity::Group(g) if !cols.is_multiple_of(g) => Err(Error::Config(format!(
                "group size {g} does not divide the input dimension {cols} of tensor '{name}'; \
                 pick a divisor of {cols}, use per-channel quantization, or allow a shorter last group"
            ))),
            _ => Ok(()),
        }
    }

    /// Short label for people, such as `W4 g128 asym`.
    pub fn label(&self) -> String {
        format!("W{} {}", self.bits, self.layout_words())
    }

    /// The dtype an llmq file records for a tensor of this scheme, such as
    /// `int4 g128 asym` (a stored name: changing it changes files).
    pub fn dtype_label(&self) -> String {
        format!("int{} {}", self.bits, self.layout_words())
    }

    /// `g128 asym`, `per-channel sym`, ...
    fn layout_words(&self) -> String {
        let gran = match self.granularity {
            Granularity::PerTensor => "per-tensor".to_string(),
            Granularity::PerChannel => "per-channel".to_string(),
            Granularity::Group(g) => format!("g{g}"),
        };
        let sym = if self.symmetric { "sym" } else { "asym" };
        format!("{gran} {sym}")
    }
}

/// The zero-point every group of a symmetric `bits`-bit scheme has.
pub fn symmetric_zero(bits: u32) -> u32 {
    1 << (bits - 1)
}

/// Scale and zero-point of one group, from the group's range.
///
/// Asymmetric: GPTQ's `quant.py`: the range always contains 0, an all-zero
/// group gets the range [-1, 1]. Symmetric: llama.cpp's Q4_0 rule, for
/// every bit width: the value of largest magnitude `m` (the maximum when
/// `|min| = |max|`) maps exactly onto the lowest code, `scale = m / −2^(b−1)`
/// with zero [`symmetric_zero`], so all `2^b` levels are used (GPTQ's
/// `max|w| / (2^(b−1) − ½)` leaves one unused); an all-zero group gets
/// scale 1. Both backends must compute exactly this; the affine grid's
/// WGSL (`shaders/affine_grid.wgsl`) mirrors it.
pub fn params_from_range(min: f32, max: f32, bits: u32, symmetric: bool) -> (f32, u32) {
    if symmetric {
        let zero = symmetric_zero(bits);
        let m = if -min > max { min } else { max };
        let scale = if m == 0.0 { 1.0 } else { m / -(zero as f32) };
        return (scale, zero);
    }
    let maxq = ((1u32 << bits) - 1) as f32;
    let mut lo = min.min(0.0);
    let mut hi = max.max(0.0);
    if lo == 0.0 && hi == 0.0 {
        lo = -1.0;
        hi = 1.0;
    }
    let scale = (hi - lo) / maxq;
    let zero = round_half_up(-lo / scale).clamp(0.0, maxq) as u32;
    (scale, zero)
}

/// `floor(x + 0.5)`: the rounding both backends use (WGSL's `round` is
/// half-to-even, Rust's is half-away-from-zero; this one is the same in both).
#[inline]
pub fn round_half_up(x: f32) -> f32 {
    (x + 0.5).floor()
}

/// Code of one weight. Kernels multiply by a host-computed `1/scale`
/// instead of dividing: WGSL division is only accurate to 2.5 ULP, while
/// multiplication is correctly rounded, so both backends round alike.
#[inline]
pub fn quantize_value(w: f32, inv_scale: f32, zero: u32, maxq: u32) -> u32 {
    // Clamping first keeps the value where an i32 truncation is exact, so
    // floor needs no libm call (`floorf` is not inlined on baseline x86-64);
    // results equal `(round_half_up(w * inv_scale) + zero).clamp(0, maxq)`.
    let y = (w * inv_scale).clamp(-512.0, 512.0) + 0.5;
    let t = y as i32 as f32;
    let floor = if t > y { t - 1.0 } else { t };
    (floor + zero as f32).clamp(0.0, maxq as f32) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fast floor in `quantize_value` must equal the plain definition,
    /// ties and out-of-range values included.
    #[test]
    fn quantize_value_equals_its_definition() {
        let plain = |w: f32, inv: f32, zero: u32, maxq: u32| {
            (round_half_up(w * inv) + zero as f32).clamp(0.0, maxq as f32) as u32
        };
        let mut x = -300.0f32;
        while x < 300.0 {
            for (zero, maxq) in [(0, 15), (8, 15), (3, 7), (128, 255)] {
                assert_eq!(
                    quantize_value(x, 1.0, zero, maxq),
                    plain(x, 1.0, zero, maxq),
                    "{x}"
                );
            }
            x += 0.125; // hits every .5 tie exactly
        }
        for w in [1e30f32, -1e30, 7.5, -7.5, 0.49999997, -0.5] {
            assert_eq!(quantize_value(w, 1.0, 8, 15), plain(w, 1.0, 8, 15), "{w}");
        }
    }

    /// Symmetric groups follow llama.cpp's `quantize_row_q4_0_ref` code for
    /// code (`d = max / -8`, `q = min(15, (int)(x/d + 8.5))`), and the value
    /// of largest magnitude comes back exactly.
    #[test]
    fn symmetric_groups_follow_q4_0() {
        let mut seed = 12345u32;
        let mut next = || {
            seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
            (seed >> 8) as f32 / (1 << 24) as f32 - 0.5
        };
        for _ in 0..200 {
            let g: Vec<f32> = (0..32).map(|_| next()).collect();
            let (lo, hi) = g
                .iter()
                .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &x| {
                    (a.min(x), b.max(x))
                });
            let (scale, zero) = params_from_range(lo, hi, 4, true);
            assert_eq!(zero, 8);
            // llama.cpp: the first value of largest magnitude, signed.
            let m = g
                .iter()
                .fold(0f32, |m, &x| if x.abs() > m.abs() { x } else { m });
            let d = m / -8.0;
            assert_eq!(scale, d);
            for &x in &g {
                let want = ((x * (1.0 / d) + 8.5) as i32).min(15) as u32;
                assert_eq!(quantize_value(x, 1.0 / scale, zero, 15), want, "{x}");
            }
            let q = quantize_value(m, 1.0 / scale, zero, 15);
            assert_eq!(q, 0);
            assert_eq!(scale * (q as f32 - zero as f32), m);
        }
        assert_eq!(params_from_range(0.0, 0.0, 4, true), (1.0, 8));
    }
}

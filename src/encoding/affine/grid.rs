//! The affine grid: `2^bits` evenly spaced levels per group, scale and
//! zero-point from the group's range ([`params_from_range`], GPTQ's
//! `quant.py`), codes by [`quantize_value`], as RTN quantizes. Its WGSL is
//! `shaders/affine_grid.wgsl` after the constants of the scheme.

use super::scheme::{params_from_range, quantize_value, symmetric_zero, QuantScheme};
use super::QuantizedTensor;
use crate::encoding::grid::{Grid, GridCodes};
use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AffineGrid {
    pub bits: u32,
    pub symmetric: bool,
}

impl AffineGrid {
    pub fn of(scheme: &QuantScheme) -> Self {
        Self {
            bits: scheme.bits,
            symmetric: scheme.symmetric,
        }
    }

    /// The stored weight of GPTQ's `codes` on this grid under `scheme`.
    pub fn tensor(
        &self,
        scheme: &QuantScheme,
        rows: usize,
        cols: usize,
        codes: GridCodes,
    ) -> Result<QuantizedTensor> {
        if AffineGrid::of(scheme) != *self || !codes.params.len().is_multiple_of(2) {
            return Err(Error::Config(format!(
                "affine grid {self:?}: codes for {} ({} parameters)",
                scheme.label(),
                codes.params.len()
            )));
        }
        let (scales, zeros) = codes
            .params
            .chunks_exact(2)
            .map(|p| (p[0], p[1] as u8))
            .unzip();
        let q = QuantizedTensor {
            rows,
            cols,
            scheme: *scheme,
            packed: codes.packed,
            scales,
            zeros,
        };
        q.validate("GPTQ output")?;
        Ok(q)
    }

    fn maxq(&self) -> u32 {
        (1 << self.bits) - 1
    }
}

impl Grid for AffineGrid {
    fn key(&self) -> String {
        let sym = if self.symmetric { "sym" } else { "asym" };
        format!("affine.{}.{sym}", self.bits)
    }

    fn code_bits(&self) -> u32 {
        self.bits
    }

    fn params_per_group(&self) -> usize {
        2
    }

    fn fit(&self, w: &[f32], _hdiag: &[f32], params: &mut [f32]) {
        let (lo, hi) = w
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &x| {
                (lo.min(x), hi.max(x))
            });
        let (s, z) = params_from_range(lo, hi, self.bits, self.symmetric);
        params[0] = s;
        params[1] = z as f32;
    }

    #[inline]
    fn round(&self, w: f32, params: &[f32]) -> (u32, f32) {
        let (s, z) = (params[0], params[1]);
        let q = quantize_value(w, 1.0 / s, z as u32, self.maxq());
        (q, s * (q as f32 - z))
    }

    fn wgsl(&self) -> String {
        format!(
            "const GRID_BITS: u32 = {}u;\nconst GRID_SYMMETRIC: bool = {};\n\
             const GRID_SYMMETRIC_ZERO: f32 = {}.0;\n{}",
            self.bits,
            self.symmetric,
            symmetric_zero(self.bits),
            include_str!("../../../shaders/affine_grid.wgsl")
        )
    }
}

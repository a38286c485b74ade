//! The affine grid: `2^bits` evenly spaced levels per group, scale and
//! zero-point from the group's range ([`params_from_range`], GPTQ's
//! `quant.py`), codes by [`quantize_value`], as RTN quantizes. Its WGSL is
//! `shaders/affine_grid.wgsl` after the constants of the scheme.

use super::clip::{clipped_params, WeightClip};
use super::scheme::{params_from_range, quantize_value, symmetric_zero, QuantScheme};
use super::search::{fit_weighted, GROW_STEPS, REFITS, SHRINK_STEPS, TOP, ZERO_SHIFTS};
use super::QuantizedTensor;
use crate::encoding::grid::{Grid, GridCodes};
use crate::error::{Error, Result};
use crate::quant::range::RangeCalibrator;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AffineGrid {
    pub bits: u32,
    pub symmetric: bool,
    /// Fit each group by the weighted scale search instead of its range.
    pub search: bool,
    /// Clip each group's range at this calibrator's threshold
    /// ([`super::clip`]; fitted on the host, see
    /// [`Grid::host_fit_groups`]); `None`: the range or the search.
    pub clip: Option<RangeCalibrator>,
}

impl AffineGrid {
    /// The range-rule grid of `scheme` (RTN's parameters).
    pub fn of(scheme: &QuantScheme) -> Self {
        Self {
            bits: scheme.bits,
            symmetric: scheme.symmetric,
            search: false,
            clip: None,
        }
    }

    /// `scheme`'s grid with its groups' ranges chosen by `clip`.
    pub fn clipped(scheme: &QuantScheme, clip: WeightClip) -> Self {
        Self {
            search: clip == WeightClip::Mse,
            clip: match clip {
                WeightClip::Threshold(c) => Some(c),
                _ => None,
            },
            ..Self::of(scheme)
        }
    }

    /// `scheme`'s grid, fitted by the weighted scale search when `search`.
    pub fn searched(scheme: &QuantScheme, search: bool) -> Self {
        Self {
            search,
            ..Self::of(scheme)
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
        if AffineGrid::of(scheme)
            != (AffineGrid {
                search: false,
                clip: None,
                ..*self
            })
            || !codes.params.len().is_multiple_of(2)
        {
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
        let search = if self.search { ".search" } else { "" };
        let clip = self
            .clip
            .map_or(String::new(), |c| format!(".clip {}", c.label()));
        format!("affine.{}.{sym}{search}{clip}", self.bits)
    }

    fn code_bits(&self) -> u32 {
        self.bits
    }

    fn params_per_group(&self) -> usize {
        2
    }

    fn fit(&self, w: &[f32], hdiag: &[f32], params: &mut [f32]) {
        // A threshold that cannot be found (never for finite weights)
        // leaves the range rule.
        if let Some(Ok((s, z))) = self
            .clip
            .map(|c| clipped_params(w, c, self.bits, self.symmetric))
        {
            params[0] = s;
            params[1] = z as f32;
            return;
        }
        if self.search {
            let (s, z) = fit_weighted(w, hdiag, self.bits, self.symmetric);
            params[0] = s;
            params[1] = z as f32;
            return;
        }
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

    /// Clipped groups are fitted on the host (their histogram thresholds
    /// have no WGSL twin) from the current weights at each block, as
    /// k-quant super-blocks are: the GPU keeps the column loop and the
    /// updates, and both backends fit with the same function.
    fn host_fit_groups(&self) -> Option<usize> {
        self.clip.map(|_| 1)
    }

    fn wgsl(&self) -> String {
        format!(
            "const GRID_BITS: u32 = {}u;\nconst GRID_SYMMETRIC: bool = {};\n\
             const GRID_SEARCH: bool = {};\nconst GRID_SHRINK_STEPS: u32 = {SHRINK_STEPS}u;\n\
             const GRID_GROW_STEPS: u32 = {GROW_STEPS}u;\nconst GRID_ZERO_SHIFTS: u32 = {ZERO_SHIFTS}u;\n\
             const GRID_REFITS: u32 = {REFITS}u;\nconst GRID_TOP: u32 = {TOP}u;\n\
             const GRID_SYMMETRIC_ZERO: f32 = {}.0;\n{}",
            self.bits,
            self.symmetric,
            self.search,
            symmetric_zero(self.bits),
            include_str!("../../../shaders/affine_grid.wgsl")
        )
    }
}

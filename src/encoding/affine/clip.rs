//! Weight clipping (`--clip`): how a group's range is chosen from its
//! weights before the range rule turns it into a scale and zero-point.
//!
//! - **min-max**: the group's extremes (nothing clips; RTN's and GPTQ's
//!   rule);
//! - **MSE**: the weighted scale search ([`super::search`]): the range
//!   minimising the group's squared error, weighted by the columns'
//!   `diag(H)` when there is calibration data, uniformly otherwise;
//! - **percentile** / **KL**: the threshold `T` of `|w|` that
//!   [`RangeCalibrator`] picks on a histogram of the group's `|w|`
//!   ([`GROUP_BINS`] bins), the range then clipped to `[−T, T]`.

use super::scheme::params_from_range;
use crate::backend::CpuBackend;
use crate::error::{Error, Result};
use crate::quant::range::{AbsHistogram, RangeCalibrator};

/// Histogram bins of one group: groups hold 32 to a few thousand weights,
/// and KL's search is quadratic in the bins.
pub const GROUP_BINS: usize = 128;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum WeightClip {
    MinMax,
    Mse,
    /// A histogram threshold (percentile or KL).
    Threshold(RangeCalibrator),
}

impl WeightClip {
    /// `minmax`, `mse`, `percentile` (with `percentile`, default 99: a
    /// group of 128 then clips its farthest weight) or `kl`.
    pub fn parse(name: &str, percentile: Option<f64>) -> Result<Self> {
        Ok(
            match RangeCalibrator::parse(name, Some(percentile.unwrap_or(99.0)))? {
                RangeCalibrator::MinMax => Self::MinMax,
                RangeCalibrator::Mse => Self::Mse,
                c => Self::Threshold(c),
            },
        )
    }

    pub fn label(&self) -> String {
        match self {
            Self::MinMax => "min-max".into(),
            Self::Mse => "MSE search".into(),
            Self::Threshold(c) => c.label(),
        }
    }
}

/// Scale and zero-point of the group `x` with its range clipped at the
/// threshold `calibrator` picks on the group's `|x|`. The range rule keeps
/// 0 on every grid, so a group on one side of 0 clips only its far end,
/// and never below its nearest weight (a threshold under every weight
/// would clip them all to one code).
pub fn clipped_params(
    x: &[f32],
    calibrator: RangeCalibrator,
    bits: u32,
    symmetric: bool,
) -> Result<(f32, u32)> {
    let (lo, hi) = x
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    if x.is_empty() || (lo == 0.0 && hi == 0.0) {
        return Ok(params_from_range(lo, hi, bits, symmetric));
    }
    let mut h = AbsHistogram::new(GROUP_BINS)?;
    h.add(&CpuBackend, "weight group", x)?;
    // An asymmetric group spends 2^bits levels on its range, a symmetric
    // threshold 2^(bits−1) per side: the same resolution.
    let t = calibrator.threshold(&h, bits.max(2))?;
    if !(t.is_finite() && t > 0.0) {
        return Err(Error::Config(format!(
            "weight clipping by {} found no threshold",
            calibrator.label()
        )));
    }
    let t = t.max(lo).max(-hi);
    Ok(params_from_range(lo.max(-t), hi.min(t), bits, symmetric))
}

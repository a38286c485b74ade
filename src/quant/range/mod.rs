//! Range calibration: the threshold `T` of `|x|` that symmetric `b`-bit
//! linear quantization maps onto its largest code (`scale = T / qmax`,
//! `qmax = 2^(b−1) − 1`; values past `T` clip), chosen from an
//! [`AbsHistogram`] of the values, which batches fill on any backend
//! without being kept:
//!
//! - **min-max**: the largest `|x|` (nothing clips);
//! - **percentile**: the `p`-th percentile of `|x|` (the upper edge of the
//!   bin where the cumulative count reaches `p`%);
//! - **MSE**: the bin edge minimising the histogram's expected squared
//!   error, clipping plus rounding, each bin's values spread evenly over it;
//! - **KL** (TensorRT's entropy calibration): the bin edge whose clipped
//!   distribution, re-quantized to `2^(b−1)` levels, is nearest in KL
//!   divergence to the clipped original ([`kl`]).
//!
//! Weights calibrate per group with the weighted scale search of
//! [`crate::encoding::affine::search`] (MSE with importances); this module
//! is for tensors calibrated as a whole, above all activations.

mod histogram;
mod kl;

pub use histogram::{AbsHistogram, DEFAULT_BINS, MAX_BINS};

use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RangeCalibrator {
    MinMax,
    /// Percentile of `|x|`, in `(0, 100]`.
    Percentile(f64),
    Mse,
    Kl,
}

impl RangeCalibrator {
    /// `minmax`, `percentile` (with `percentile`, default 99.99), `mse`, `kl`.
    pub fn parse(name: &str, percentile: Option<f64>) -> Result<Self> {
        let c = match name.to_ascii_lowercase().as_str() {
            "minmax" | "min-max" => Self::MinMax,
            "percentile" => Self::Percentile(percentile.unwrap_or(99.99)),
            "mse" => Self::Mse,
            "kl" | "entropy" => Self::Kl,
            other => {
                return Err(Error::Config(format!(
                    "unknown range calibrator '{other}'; use minmax, percentile, mse or kl"
                )))
            }
        };
        if let Self::Percentile(p) = c {
            if !(p > 0.0 && p <= 100.0) {
                return Err(Error::Config(format!(
                    "--percentile {p} is outside (0, 100]"
                )));
            }
        }
        Ok(c)
    }

    pub fn label(&self) -> String {
        match self {
            Self::MinMax => "min-max".into(),
            Self::Percentile(p) => format!("percentile {p}"),
            Self::Mse => "MSE".into(),
            Self::Kl => "KL".into(),
        }
    }

    /// The threshold for symmetric `bits`-bit quantization of the values
    /// `h` holds; 0 when they are all 0 (a dead channel: the caller decides).
    pub fn threshold(&self, h: &AbsHistogram, bits: u32) -> Result<f32> {
        if !(2..=16).contains(&bits) {
            return Err(Error::Config(format!(
                "range calibration covers 2 to 16 bits, not {bits}"
            )));
        }
        if h.total == 0 || h.seen_max == 0.0 {
            return Ok(0.0);
        }
        let t = match *self {
            Self::MinMax => h.seen_max,
            Self::Percentile(p) => percentile(h, p),
            Self::Mse => mse_threshold(h, bits),
            Self::Kl => kl::threshold(h, 1 << (bits - 1)),
        };
        Ok(t.min(h.seen_max))
    }
}

/// Share of the values `h` holds above `t` (clipped by that threshold),
/// counting the bin that holds `t` as not clipped.
pub fn clipped_share(h: &AbsHistogram, t: f32) -> f64 {
    if h.total == 0 || h.max == 0.0 {
        return 0.0;
    }
    let first = ((t / h.width()) as usize + 1).min(h.bins());
    h.counts[first..].iter().sum::<u64>() as f64 / h.total as f64
}

fn percentile(h: &AbsHistogram, p: f64) -> f32 {
    let want = (p / 100.0 * h.total as f64).ceil() as u64;
    let mut seen = 0u64;
    for (i, &c) in h.counts.iter().enumerate() {
        seen += c;
        if seen >= want {
            return (i + 1) as f32 * h.width();
        }
    }
    h.max
}

/// ∫₀ˣ (v − s·round(v/s))² dv: whole rounding periods of `s³/12`, plus
/// the part of the current one.
fn rounding_integral(x: f64, s: f64) -> f64 {
    let k = ((x + s / 2.0) / s).floor();
    let u = x - k * s;
    k * s * s * s / 12.0 + (u * u * u + s * s * s / 8.0) / 3.0
}

/// Expected squared error of quantizing the histogram's values with
/// threshold `t`, each bin's values spread evenly over it: rounding below
/// `t`, clipping above (both integrated exactly over the bin).
pub fn histogram_mse(h: &AbsHistogram, t: f32, bits: u32) -> f64 {
    let qmax = ((1u32 << (bits - 1)) - 1) as f64;
    let (t, w) = (t as f64, h.width() as f64);
    let s = t / qmax;
    let clip = |a: f64, b: f64| ((b - t).powi(3) - (a - t).powi(3)) / 3.0;
    h.counts
        .iter()
        .enumerate()
        .filter(|(_, &c)| c > 0)
        .map(|(i, &c)| {
            let (a, b) = (i as f64 * w, (i + 1) as f64 * w);
            let inside = rounding_integral(b.min(t), s) - rounding_integral(a.min(t), s);
            let outside = if b > t { clip(a.max(t), b) } else { 0.0 };
            c as f64 * (inside + outside) / w
        })
        .sum::<f64>()
        / h.total as f64
}

/// The bin edge (from 1/64 of the range up, and the maximum itself) with
/// the least [`histogram_mse`].
fn mse_threshold(h: &AbsHistogram, bits: u32) -> f32 {
    let n = h.bins();
    let candidates = (n / 64..n)
        .map(|i| (i + 1) as f32 * h.width())
        .chain([h.seen_max]);
    let mut best = (f64::INFINITY, h.seen_max);
    for t in candidates {
        let e = histogram_mse(h, t, bits);
        if e < best.0 {
            best = (e, t);
        }
    }
    best.1
}

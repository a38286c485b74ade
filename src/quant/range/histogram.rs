//! [`AbsHistogram`]: a fixed number of equal bins over `[0, max)` of `|x|`,
//! filled batch by batch on a backend without keeping the batches. When a
//! batch holds a value past `max`, the range doubles (as often as needed)
//! and neighbouring bins merge pairwise, so earlier counts stay exact
//! (TensorRT's and PyTorch's histogram observers grow the same way).

use crate::backend::Backend;
use crate::error::{Error, Result};

/// Bins of TensorRT's entropy calibration.
pub const DEFAULT_BINS: usize = 2048;

/// The largest bin count the GPU kernel holds in workgroup memory.
pub const MAX_BINS: usize = 4096;

#[derive(Clone, Debug, PartialEq)]
pub struct AbsHistogram {
    pub counts: Vec<u64>,
    /// Upper edge of the last bin; 0 until a nonzero value arrives.
    pub max: f32,
    /// The largest |x| seen.
    pub seen_max: f32,
    pub total: u64,
}

impl AbsHistogram {
    pub fn new(bins: usize) -> Result<Self> {
        if !(16..=MAX_BINS).contains(&bins) || !bins.is_power_of_two() {
            return Err(Error::Config(format!(
                "a histogram needs a power of two from 16 to {MAX_BINS} bins, not {bins}"
            )));
        }
        Ok(Self {
            counts: vec![0; bins],
            max: 0.0,
            seen_max: 0.0,
            total: 0,
        })
    }

    pub fn bins(&self) -> usize {
        self.counts.len()
    }

    /// Width of one bin.
    pub fn width(&self) -> f32 {
        self.max / self.bins() as f32
    }

    /// `bins / max` as the kernels multiply by it.
    pub fn inv_width(&self) -> f32 {
        self.bins() as f32 / self.max
    }

    /// Adds `x` (named `what` in errors: a tensor, a linear's input).
    pub fn add(&mut self, backend: &dyn Backend, what: &str, x: &[f32]) -> Result<()> {
        let mut m = 0f32;
        for (i, &v) in x.iter().enumerate() {
            if !v.is_finite() {
                return Err(Error::BadTensor {
                    name: what.into(),
                    msg: format!(
                        "value {v} at index {i}: a range cannot be calibrated on non-finite values"
                    ),
                });
            }
            m = m.max(v.abs());
        }
        if x.is_empty() {
            return Ok(());
        }
        self.grow_to(m);
        self.seen_max = self.seen_max.max(m);
        if self.max == 0.0 {
            // Every value so far is 0: it lands in bin 0 once a range exists.
            self.counts[0] += x.len() as u64;
        } else {
            let c = backend.abs_histogram(x, self.bins(), self.inv_width())?;
            for (a, b) in self.counts.iter_mut().zip(c) {
                *a += u64::from(b);
            }
        }
        self.total += x.len() as u64;
        Ok(())
    }

    /// Adds another histogram of the same bin count.
    pub fn merge(&mut self, other: &AbsHistogram) -> Result<()> {
        if other.bins() != self.bins() {
            return Err(Error::Config(format!(
                "cannot merge a {}-bin histogram into a {}-bin one",
                other.bins(),
                self.bins()
            )));
        }
        // The merged range covers both; the other's bins move onto it by
        // their centres (exact when its range is this one).
        self.grow_to(other.max);
        let mut other = other.clone();
        if other.max > 0.0 && other.max != self.max {
            other.rebin_to(self.max);
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.seen_max = self.seen_max.max(other.seen_max);
        Ok(())
    }

    /// Doubles the range until it covers `m`, merging bins pairwise.
    fn grow_to(&mut self, m: f32) {
        if self.max == 0.0 {
            if m > 0.0 {
                // Slightly above the maximum, so it falls inside the last bin.
                self.max = m * (1.0 + 1e-6);
            }
            return;
        }
        while self.max <= m {
            let n = self.bins();
            for i in 0..n / 2 {
                self.counts[i] = self.counts[2 * i] + self.counts[2 * i + 1];
            }
            self.counts[n / 2..].iter_mut().for_each(|c| *c = 0);
            self.max *= 2.0;
        }
    }

    /// Re-bins onto the range `[0, max)` (≥ the current one) by bin centres.
    fn rebin_to(&mut self, max: f32) {
        let (n, w) = (self.bins(), self.width());
        let mut out = vec![0u64; n];
        for (i, &c) in self.counts.iter().enumerate() {
            let centre = (i as f32 + 0.5) * w;
            let j = ((centre * n as f32 / max) as usize).min(n - 1);
            out[j] += c;
        }
        self.counts = out;
        self.max = max;
    }
}

//! TensorRT's entropy calibration ("8-bit Inference with TensorRT", Migacz
//! 2017; MXNet's `_get_optimal_threshold` is the reference code this
//! follows): for each candidate bin count `i ≥ levels`, the reference
//! distribution `P` is the first `i` bins with every count past them added
//! to the last; the candidate `Q` merges those `i` bins into `levels`
//! groups and spreads each group's total evenly over its nonzero bins.
//! Both are normalised and smoothed (zero bins get a small mass taken from
//! the others, so the divergence is finite), and the threshold is the upper
//! edge of the `i` with the least `KL(P‖Q)`.

use super::AbsHistogram;

/// Mass moved onto empty bins by the smoothing (MXNet's `eps`).
const EPS: f64 = 1e-4;

/// `d` normalised, with `EPS` given to its zero bins and taken evenly from
/// the others; `None` when every bin is zero.
fn smooth(d: &[f64]) -> Option<Vec<f64>> {
    let total: f64 = d.iter().sum();
    let zeros = d.iter().filter(|&&v| v == 0.0).count();
    let nonzeros = d.len() - zeros;
    if total == 0.0 || nonzeros == 0 {
        return None;
    }
    let take = EPS * zeros as f64 / nonzeros as f64;
    Some(
        d.iter()
            .map(|&v| if v == 0.0 { EPS } else { v / total - take })
            .map(|v| v.max(f64::MIN_POSITIVE))
            .collect(),
    )
}

/// `KL(P‖Q)` of the first `i` bins of `counts` against their
/// re-quantization into `levels` groups; `None` when undefined.
pub(super) fn divergence(counts: &[u64], i: usize, levels: usize) -> Option<f64> {
    let mut p: Vec<f64> = counts[..i].iter().map(|&c| c as f64).collect();
    p[i - 1] += counts[i..].iter().map(|&c| c as f64).sum::<f64>();
    let sliced = &counts[..i];
    let merged = i / levels;
    let mut q = vec![0f64; i];
    for j in 0..levels {
        let start = j * merged;
        // The last group takes the bins the division left over.
        let stop = if j == levels - 1 { i } else { start + merged };
        let group = &sliced[start..stop];
        let total: f64 = group.iter().map(|&c| c as f64).sum();
        let nonzero = group.iter().filter(|&&c| c != 0).count();
        if nonzero > 0 {
            for (k, &c) in group.iter().enumerate() {
                if c != 0 {
                    q[start + k] = total / nonzero as f64;
                }
            }
        }
    }
    let (p, q) = (smooth(&p)?, smooth(&q)?);
    Some(p.iter().zip(&q).map(|(&a, &b)| a * (a / b).ln()).sum())
}

/// The threshold of the least divergence for `levels` quantized levels.
pub(super) fn threshold(h: &AbsHistogram, levels: usize) -> f32 {
    let n = h.bins();
    if n <= levels {
        return h.seen_max;
    }
    let mut best = (f64::INFINITY, n);
    for i in levels..=n {
        if let Some(d) = divergence(&h.counts, i, levels) {
            if d < best.0 {
                best = (d, i);
            }
        }
    }
    best.1 as f32 * h.width()
}

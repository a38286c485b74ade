//! Weighted EM (k-means) of one codebook: `n` points of `d` values, each
//! value with an importance weight; the E-step assigns each point to the
//! centroid minimising `Σⱼ wⱼ (xⱼ − cⱼ)²` and the M-step sets each centroid
//! to the weighted mean of its points, per dimension (GPTVQ's EM).
//!
//! Unlike the official code, a centroid `c` left without points is
//! re-seeded at the point worst served by its centroid among points
//! `c, c + k, c + 2k, ...` (there it collapses to zero), and the iterations
//! stop early once no assignment changes.

use rand::{Rng, SeedableRng};

/// How the centroids start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum VqInit {
    /// Points sorted by their Mahalanobis distance to the mean, `k` taken
    /// at evenly spaced ranks (the paper's scripts).
    Mahalanobis,
    /// k-means++: the first point, then points drawn with probability
    /// proportional to their weighted distance to the nearest centroid.
    KmeansPlusPlus,
}

/// Index of the centroid of `cb` (`k · d` values) nearest to `x` under
/// the weights `w` (both `d` values), and its weighted squared distance.
#[inline]
pub fn nearest(x: &[f32], w: &[f32], cb: &[f32], d: usize) -> (usize, f32) {
    let (mut best, mut best_d) = (0, f32::INFINITY);
    for (i, c) in cb.chunks_exact(d).enumerate() {
        let mut dist = 0f32;
        for p in 0..d {
            let e = x[p] - c[p];
            dist += w[p] * e * e;
        }
        if dist < best_d {
            (best, best_d) = (i, dist);
        }
    }
    (best, best_d)
}

/// EM of `k` centroids over `points` (`n · d`) with `weights` (`n · d`,
/// non-negative), at most `iters` iterations; writes `k · d` values to
/// `out`. `seed` drives k-means++ only.
#[allow(clippy::too_many_arguments)]
pub fn fit(
    points: &[f32],
    weights: &[f32],
    d: usize,
    k: usize,
    iters: usize,
    init: VqInit,
    seed: u64,
    out: &mut [f32],
) {
    initialise(points, weights, d, k, init, seed, out);
    iterate(points, weights, d, k, iters, out);
}

/// The starting centroids (`k · d` values into `out`).
pub fn initialise(
    points: &[f32],
    weights: &[f32],
    d: usize,
    k: usize,
    init: VqInit,
    seed: u64,
    out: &mut [f32],
) {
    if points.len() < d {
        out.fill(0.0);
        return;
    }
    match init {
        VqInit::Mahalanobis => mahalanobis_init(points, d, k, out),
        VqInit::KmeansPlusPlus => kmeans_pp_init(points, weights, d, k, seed, out),
    }
}

/// At most `iters` EM iterations from the centroids in `cb`; returns the
/// iterations run (the last one changed no assignment, or `iters`).
pub fn iterate(
    points: &[f32],
    weights: &[f32],
    d: usize,
    k: usize,
    iters: usize,
    cb: &mut [f32],
) -> usize {
    let n = points.len() / d;
    let mut assign = vec![usize::MAX; n];
    let mut dist = vec![0f32; n];
    let (mut sums, mut wsums) = (vec![0f64; k * d], vec![0f64; k * d]);
    for it in 0..iters {
        // E-step.
        let mut changed = false;
        for i in 0..n {
            let (x, w) = (&points[i * d..(i + 1) * d], &weights[i * d..(i + 1) * d]);
            let (a, e) = nearest(x, w, cb, d);
            changed |= assign[i] != a;
            (assign[i], dist[i]) = (a, e);
        }
        if !changed {
            return it + 1;
        }
        // M-step: per-dimension weighted means.
        sums.fill(0.0);
        wsums.fill(0.0);
        for i in 0..n {
            for p in 0..d {
                let (x, w) = (points[i * d + p] as f64, weights[i * d + p] as f64);
                sums[assign[i] * d + p] += w * x;
                wsums[assign[i] * d + p] += w;
            }
        }
        let mut counts = vec![0usize; k];
        assign.iter().for_each(|&a| counts[a] += 1);
        for c in 0..k {
            if counts[c] == 0 {
                // Re-seed at the worst-served point among points c, c + k,
                // c + 2k, ...: disjoint for two empty centroids, and one
                // pass per centroid as the GPU kernel does it.
                if let Some(far) = (c..n)
                    .step_by(k)
                    .max_by(|&a, &b| dist[a].total_cmp(&dist[b]).then(b.cmp(&a)))
                {
                    cb[c * d..(c + 1) * d].copy_from_slice(&points[far * d..(far + 1) * d]);
                }
                continue;
            }
            for p in 0..d {
                let ws = wsums[c * d + p];
                if ws > 0.0 {
                    cb[c * d + p] = (sums[c * d + p] / ws) as f32;
                }
            }
        }
    }
    iters
}

/// Centre, `Σ = XcᵀXc`, sort by `xcᵀ Σ⁻¹ xc`, take ranks
/// `round(linspace(0, n − 1, k))`.
fn mahalanobis_init(points: &[f32], d: usize, k: usize, out: &mut [f32]) {
    let n = points.len() / d;
    let mut mean = vec![0f64; d];
    for x in points.chunks_exact(d) {
        for p in 0..d {
            mean[p] += x[p] as f64 / n as f64;
        }
    }
    let mut cov = vec![0f64; d * d];
    for x in points.chunks_exact(d) {
        for a in 0..d {
            for b in 0..d {
                cov[a * d + b] += (x[a] as f64 - mean[a]) * (x[b] as f64 - mean[b]);
            }
        }
    }
    // A small ridge keeps Σ invertible for degenerate groups.
    let tr: f64 = (0..d).map(|a| cov[a * d + a]).sum::<f64>() / d as f64;
    for a in 0..d {
        cov[a * d + a] += 1e-9 * tr.max(1e-30);
    }
    let inv = invert(&cov, d);
    let mut order: Vec<(f64, usize)> = points
        .chunks_exact(d)
        .enumerate()
        .map(|(i, x)| {
            let xc: Vec<f64> = (0..d).map(|p| x[p] as f64 - mean[p]).collect();
            let mut m = 0.0;
            for a in 0..d {
                for b in 0..d {
                    m += xc[a] * inv[a * d + b] * xc[b];
                }
            }
            (m, i)
        })
        .collect();
    order.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    for c in 0..k {
        let rank = if k == 1 {
            0
        } else {
            ((c as f64 * (n - 1) as f64 / (k - 1) as f64).round() as usize).min(n - 1)
        };
        let i = order[rank].1;
        out[c * d..(c + 1) * d].copy_from_slice(&points[i * d..(i + 1) * d]);
    }
}

fn kmeans_pp_init(points: &[f32], weights: &[f32], d: usize, k: usize, seed: u64, out: &mut [f32]) {
    let n = points.len() / d;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    out[..d].copy_from_slice(&points[..d]);
    let mut best: Vec<f64> = (0..n)
        .map(|i| dist(&points[i * d..], &weights[i * d..], &out[..d], d))
        .collect();
    for c in 1..k {
        let total: f64 = best.iter().sum();
        let pick = if total > 0.0 {
            let mut u = rng.gen::<f64>() * total;
            best.iter()
                .position(|&b| {
                    u -= b;
                    u <= 0.0
                })
                .unwrap_or(n - 1)
        } else {
            rng.gen_range(0..n)
        };
        out[c * d..(c + 1) * d].copy_from_slice(&points[pick * d..(pick + 1) * d]);
        for (i, b) in best.iter_mut().enumerate() {
            *b = b.min(dist(&points[i * d..], &weights[i * d..], &out[c * d..], d));
        }
    }
}

fn dist(x: &[f32], w: &[f32], c: &[f32], d: usize) -> f64 {
    (0..d)
        .map(|p| w[p] as f64 * ((x[p] - c[p]) as f64).powi(2))
        .sum()
}

/// Inverse of a small symmetric positive definite `[d, d]` matrix
/// (Gauss-Jordan; `d ≤ 4`).
fn invert(a: &[f64], d: usize) -> Vec<f64> {
    let mut m = a.to_vec();
    let mut inv: Vec<f64> = (0..d * d)
        .map(|i| if i / d == i % d { 1.0 } else { 0.0 })
        .collect();
    for c in 0..d {
        let piv = m[c * d + c];
        if piv.abs() < 1e-300 {
            continue;
        }
        for j in 0..d {
            m[c * d + j] /= piv;
            inv[c * d + j] /= piv;
        }
        for r in 0..d {
            if r != c {
                let f = m[r * d + c];
                for j in 0..d {
                    m[r * d + j] -= f * m[c * d + j];
                    inv[r * d + j] -= f * inv[c * d + j];
                }
            }
        }
    }
    inv
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three well-separated 2D clusters are found exactly.
    #[test]
    fn finds_separated_clusters() {
        let centres = [(-1.0f32, 0.5f32), (0.2, -0.8), (1.5, 1.0)];
        let mut pts = Vec::new();
        for i in 0..300 {
            let (cx, cy) = centres[i % 3];
            let j = (i / 3) as f32;
            pts.extend([cx + 0.01 * (j % 7.0 - 3.0), cy + 0.01 * (j % 5.0 - 2.0)]);
        }
        let w = vec![1.0; pts.len()];
        for init in [VqInit::Mahalanobis, VqInit::KmeansPlusPlus] {
            let mut cb = vec![0f32; 6];
            fit(&pts, &w, 2, 3, 50, init, 7, &mut cb);
            for (cx, cy) in centres {
                let (_, e) = nearest(&[cx, cy], &[1.0, 1.0], &cb, 2);
                assert!(e < 1e-3, "{init:?}: {cb:?}");
            }
        }
    }

    /// With more centroids than distinct points no centroid stays empty.
    #[test]
    fn empty_clusters_are_reseeded() {
        let pts: Vec<f32> = (0..64).map(|i| (i % 8) as f32).collect();
        let w = vec![1.0; 64];
        let mut cb = vec![0f32; 8];
        fit(&pts, &w, 1, 8, 100, VqInit::Mahalanobis, 0, &mut cb);
        let mut sorted = cb.clone();
        sorted.sort_by(f32::total_cmp);
        assert_eq!(sorted, (0..8).map(|i| i as f32).collect::<Vec<_>>());
    }
}

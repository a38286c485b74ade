//! SVD-compressed 1D codebooks (GPTVQ's `--svd-rank`, the paper's Table
//! 18): the `n` codebooks of a tensor, each sorted ascending (its indices
//! remapped to match), are stacked as `C` `[n, k]` and stored as `C ≈ A B`:
//! the factors `A` `[n, r]` on the codebook grid (int8 with one scale per
//! codebook, or f16) and the basis `B` `[r, k]` (f16, one per tensor), `B`'s
//! rows the top right singular vectors of `C`. That costs `r·b_c` bits per
//! codebook instead of `k·b_c`, plus `16·r·k` bits per tensor. Sorting is
//! what makes the codebooks alike enough to share a basis (the official
//! code's rule), so only 1D codebooks are compressed.

use super::{quantize_codebook, VqTensor};
use crate::encoding::affine::packing::{pack_row, unpack_row};
use crate::error::Result;

/// The stored factors of an SVD-compressed tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct SvdCodebooks {
    /// `[codebooks, rank]`, on the codebook grid (decoded).
    pub factors: Vec<f32>,
    /// `[rank, k]`, f16 values.
    pub basis: Vec<f32>,
}

/// `C = A B`: `a` `[n, r]`, `b` `[r, k]`, in a fixed order (the reader and
/// the writer decode alike).
pub fn decode(a: &[f32], b: &[f32], r: usize, k: usize) -> Vec<f32> {
    let mut c = vec![0f32; a.len() / r.max(1) * k];
    for (row, ar) in c.chunks_mut(k).zip(a.chunks(r)) {
        for (p, &ap) in ar.iter().enumerate() {
            for (v, &bp) in row.iter_mut().zip(&b[p * k..(p + 1) * k]) {
                *v += ap * bp;
            }
        }
    }
    c
}

/// `t` with its codebooks compressed to rank `r`: sorted and remapped, the
/// basis from their SVD rounded to f16, the least-squares factors rounded
/// onto the codebook grid, and the codebooks their product.
pub fn compress(t: &VqTensor, r: usize) -> Result<VqTensor> {
    let scheme = t.scheme.with_svd_rank(r as u32)?;
    let k = scheme.centroids();
    let mut t = sorted(t);
    t.scheme = scheme;
    let n = t.codebooks.len() / k;
    let basis: Vec<f32> = top_right_vectors(&t.codebooks, n, k, r)
        .iter()
        .map(|&v| half::f16::from_f64(v).to_f32())
        .collect();
    let factors = least_squares_factors(&t.codebooks, &basis, n, r, k);
    with_factors(&mut t, factors, basis);
    Ok(t)
}

/// Sets `t`'s factors (rounded onto the codebook grid, one scale per
/// codebook), basis and the codebooks they decode to.
pub fn with_factors(t: &mut VqTensor, mut factors: Vec<f32>, basis: Vec<f32>) {
    let (bits, k) = (t.scheme.codebook_bits, t.scheme.centroids());
    let r = basis.len() / k;
    t.scales = factors
        .chunks_mut(r)
        .map(|a| quantize_codebook(a, bits))
        .collect();
    t.codebooks = decode(&factors, &basis, r, k);
    t.svd = Some(Box::new(SvdCodebooks { factors, basis }));
}

/// `t` with every codebook's values ascending and its indices remapped.
fn sorted(t: &VqTensor) -> VqTensor {
    let s = &t.scheme;
    let (k, bits, cols) = (s.centroids(), s.index_bits(), t.cols);
    let mut out = t.clone();
    // rank[c][old] = new position of value `old` of codebook c.
    let ranks: Vec<Vec<u32>> = t
        .codebooks
        .chunks(k)
        .zip(out.codebooks.chunks_mut(k))
        .map(|(cb, sorted_cb)| {
            let mut order: Vec<usize> = (0..k).collect();
            order.sort_by(|&a, &b| cb[a].total_cmp(&cb[b]));
            let mut rank = vec![0u32; k];
            for (new, &old) in order.iter().enumerate() {
                rank[old] = new as u32;
                sorted_cb[new] = cb[old];
            }
            rank
        })
        .collect();
    let words = super::index_words(s, cols);
    let mut idx = vec![0u32; cols];
    for r in 0..t.rows {
        let row = &mut out.indices[r * words..(r + 1) * words];
        unpack_row(row, bits, &mut idx);
        for (j, i) in idx.iter_mut().enumerate() {
            *i = ranks[s.codebook_of(cols, r, j)][*i as usize];
        }
        row.fill(0);
        pack_row(&idx, bits, row);
    }
    out
}

/// The top `r` right singular vectors of `c` `[n, k]` (rows of the result
/// `[r, k]`): eigenvectors of `cᵀc` by cyclic Jacobi rotations in f64.
fn top_right_vectors(c: &[f32], n: usize, k: usize, r: usize) -> Vec<f64> {
    let mut g = vec![0f64; k * k];
    for row in c.chunks(k).take(n) {
        for i in 0..k {
            for j in 0..k {
                g[i * k + j] += row[i] as f64 * row[j] as f64;
            }
        }
    }
    let mut v: Vec<f64> = (0..k * k)
        .map(|i| if i / k == i % k { 1.0 } else { 0.0 })
        .collect();
    for _sweep in 0..64 {
        let off: f64 = (0..k * k)
            .filter(|i| i / k != i % k)
            .map(|i| g[i] * g[i])
            .sum();
        let diag: f64 = (0..k).map(|i| g[i * k + i] * g[i * k + i]).sum();
        if off <= 1e-24 * diag.max(f64::MIN_POSITIVE) {
            break;
        }
        for p in 0..k {
            for q in p + 1..k {
                let apq = g[p * k + q];
                if apq == 0.0 {
                    continue;
                }
                let theta = (g[q * k + q] - g[p * k + p]) / (2.0 * apq);
                // The smaller root of t² + 2θt − 1 = 0 zeroes g[p, q].
                let sign = if theta >= 0.0 { 1.0 } else { -1.0 };
                let t = sign / (theta.abs() + (theta * theta + 1.0).sqrt());
                let cs = 1.0 / (t * t + 1.0).sqrt();
                let sn = t * cs;
                for i in 0..k {
                    let (gip, giq) = (g[i * k + p], g[i * k + q]);
                    g[i * k + p] = cs * gip - sn * giq;
                    g[i * k + q] = sn * gip + cs * giq;
                }
                for i in 0..k {
                    let (gpi, gqi) = (g[p * k + i], g[q * k + i]);
                    g[p * k + i] = cs * gpi - sn * gqi;
                    g[q * k + i] = sn * gpi + cs * gqi;
                }
                for i in 0..k {
                    let (vip, viq) = (v[i * k + p], v[i * k + q]);
                    v[i * k + p] = cs * vip - sn * viq;
                    v[i * k + q] = sn * vip + cs * viq;
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..k).collect();
    order.sort_by(|&a, &b| g[b * k + b].total_cmp(&g[a * k + a]));
    order
        .iter()
        .take(r)
        .flat_map(|&e| (0..k).map(move |i| (e, i)))
        .map(|(e, i)| v[i * k + e])
        .collect()
}

/// `A = C Bᵀ (B Bᵀ)⁻¹`: each codebook's least-squares coordinates in the
/// (f16-rounded, so not exactly orthonormal) basis `b` `[r, k]`.
fn least_squares_factors(c: &[f32], b: &[f32], n: usize, r: usize, k: usize) -> Vec<f32> {
    let mut gram = vec![0f64; r * r];
    for p in 0..r {
        for q in 0..r {
            gram[p * r + q] = (0..k)
                .map(|j| b[p * k + j] as f64 * b[q * k + j] as f64)
                .sum();
        }
    }
    let inv = invert(&gram, r);
    let mut a = vec![0f32; n * r];
    for (ar, cr) in a.chunks_mut(r).zip(c.chunks(k)) {
        let cb: Vec<f64> = (0..r)
            .map(|p| (0..k).map(|j| cr[j] as f64 * b[p * k + j] as f64).sum())
            .collect();
        for (p, v) in ar.iter_mut().enumerate() {
            *v = (0..r).map(|q| inv[p * r + q] * cb[q]).sum::<f64>() as f32;
        }
    }
    a
}

/// Inverse of a small symmetric positive definite `[r, r]` matrix (Gauss-Jordan).
fn invert(m: &[f64], r: usize) -> Vec<f64> {
    let mut a = m.to_vec();
    let mut inv: Vec<f64> = (0..r * r)
        .map(|i| if i / r == i % r { 1.0 } else { 0.0 })
        .collect();
    for col in 0..r {
        let piv = a[col * r + col];
        let piv = if piv.abs() < 1e-300 { 1e-300 } else { piv };
        for j in 0..r {
            a[col * r + j] /= piv;
            inv[col * r + j] /= piv;
        }
        for row in 0..r {
            if row != col {
                let f = a[row * r + col];
                for j in 0..r {
                    a[row * r + j] -= f * a[col * r + j];
                    inv[row * r + j] -= f * inv[col * r + j];
                }
            }
        }
    }
    inv
}

//! GPTVQ's codebook update: with every vector's assignment fixed, the
//! centroids that minimise `tr((W − Q) H (W − Q)ᵀ)`, `Q` the weight the
//! codebooks and indices decode to and `H` the (unblended, undamped)
//! Hessian.
//!
//! `Q` is linear in the centroids (`Q = P c`, `P` scattering each centroid
//! value onto the weights assigned to it), so the loss is a quadratic
//! `cᵀ Pᵀ(·H) P c − 2 cᵀ Pᵀ(W H) + const` whose minimum solves the normal
//! equations `Pᵀ(P c · H) = Pᵀ(W H)`. The official code takes 25 Adam steps
//! (lr 1e-3) on it; here preconditioned conjugate gradients (Jacobi:
//! `Pᵀ diag(H)`) solve it, each step one `[rows, cols] · [cols, cols]`
//! SGEMM, the cost of one Adam step, and reach the minimum Adam only
//! approaches (a fixed learning rate cannot move centroids of different
//! scales at the right speed).

use crate::encoding::affine::packing::unpack_row;
use crate::encoding::vq::{index_words, VqTensor};
use crate::gemm;
use rayon::prelude::*;

/// Relative residual at which the conjugate gradients stop.
const TOLERANCE: f64 = 1e-5;

/// The indices of `t` unpacked, `[rows, cols / dim]`.
fn indices(t: &VqTensor) -> Vec<u32> {
    let s = &t.scheme;
    let (n, words) = (t.cols / s.dim as usize, index_words(s, t.cols));
    let mut out = vec![0u32; t.rows * n];
    out.par_chunks_mut(n)
        .enumerate()
        .for_each(|(r, o)| unpack_row(&t.indices[r * words..(r + 1) * words], s.index_bits(), o));
    out
}

/// The assignment structure `P` of a VQ weight.
struct Assignment<'a> {
    t: &'a VqTensor,
    idx: Vec<u32>,
}

impl Assignment<'_> {
    /// Slot of the weight `(r, j)` among the codebook values.
    #[inline]
    fn slot(&self, r: usize, j: usize) -> usize {
        let s = &self.t.scheme;
        let d = s.dim as usize;
        let i = self.idx[r * (self.t.cols / d) + j / d] as usize;
        s.codebook_of(self.t.cols, r, j) * s.codebook_len() + i * d + j % d
    }

    /// `P c`: the weight `c` decodes to.
    fn expand(&self, c: &[f32]) -> Vec<f32> {
        let cols = self.t.cols;
        let mut q = vec![0f32; self.t.rows * cols];
        q.par_chunks_mut(cols).enumerate().for_each(|(r, row)| {
            for (j, v) in row.iter_mut().enumerate() {
                *v = c[self.slot(r, j)];
            }
        });
        q
    }

    /// `Pᵀ g`: each weight's value added onto its centroid value, in f64
    /// (row groups in parallel: each owns its codebooks).
    fn gather(&self, g: &[f32]) -> Vec<f64> {
        let s = &self.t.scheme;
        let (cols, rpc) = (self.t.cols, s.rows_per_codebook());
        let per_group = s.spans(cols) * s.codebook_len();
        let mut out = vec![0f64; self.t.codebooks.len()];
        out.par_chunks_mut(per_group)
            .enumerate()
            .for_each(|(rg, o)| {
                let base = rg * per_group;
                for r in rg * rpc..(rg + 1) * rpc {
                    for j in 0..cols {
                        o[self.slot(r, j) - base] += g[r * cols + j] as f64;
                    }
                }
            });
        out
    }

    /// `Pᵀ (P c · H)`.
    fn apply(&self, c: &[f32], h: &[f32]) -> Vec<f64> {
        let (rows, cols) = (self.t.rows, self.t.cols);
        self.gather(&gemm::dense_xwt(&self.expand(c), h, rows, cols, cols))
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The codebooks of `t` that minimise `tr((W − Q) H (W − Q)ᵀ)` with the
/// assignments of `t` fixed, after at most `iters` conjugate-gradient steps
/// from `t`'s codebooks (f32, not yet on the stored grid), and the steps
/// taken. Centroids no weight is assigned to keep their values.
pub fn refine(t: &VqTensor, w: &[f32], h: &[f32], iters: usize) -> (Vec<f32>, usize) {
    let (rows, cols) = (t.rows, t.cols);
    let p = Assignment { t, idx: indices(t) };
    let hdiag: Vec<f32> = (0..cols).map(|i| h[i * cols + i]).collect();
    let tiled: Vec<f32> = (0..rows * cols).map(|k| hdiag[k % cols]).collect();
    let precond = p.gather(&tiled);
    let b = p.gather(&gemm::dense_xwt(w, h, rows, cols, cols));
    let mut x: Vec<f64> = t.codebooks.iter().map(|&v| v as f64).collect();
    let as_f32 = |v: &[f64]| v.iter().map(|&a| a as f32).collect::<Vec<f32>>();
    let ax = p.apply(&t.codebooks, h);
    let mut r: Vec<f64> = b.iter().zip(&ax).map(|(b, a)| b - a).collect();
    let inv = |r: &[f64]| -> Vec<f64> {
        r.iter()
            .zip(&precond)
            .map(|(r, m)| if *m > 0.0 { r / m } else { 0.0 })
            .collect()
    };
    let mut z = inv(&r);
    let mut dir = z.clone();
    let mut rz = dot(&r, &z);
    let b_norm = dot(&b, &b).sqrt().max(f64::MIN_POSITIVE);
    let mut steps = 0;
    for _ in 0..iters {
        if dot(&r, &r).sqrt() <= TOLERANCE * b_norm {
            break;
        }
        steps += 1;
        let ad = p.apply(&as_f32(&dir), h);
        let dad = dot(&dir, &ad);
        if dad.is_nan() || dad <= 0.0 {
            break;
        }
        let alpha = rz / dad;
        x.iter_mut().zip(&dir).for_each(|(x, d)| *x += alpha * d);
        r.iter_mut().zip(&ad).for_each(|(r, a)| *r -= alpha * a);
        z = inv(&r);
        let rz_next = dot(&r, &z);
        let beta = rz_next / rz.max(f64::MIN_POSITIVE);
        rz = rz_next;
        dir.iter_mut().zip(&z).for_each(|(d, z)| *d = z + beta * *d);
    }
    (as_f32(&x), steps)
}

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

use crate::backend::CodebookSystem;
use crate::encoding::VqTensor;
use crate::error::Result;

/// Relative residual at which the conjugate gradients stop.
const TOLERANCE: f64 = 1e-5;

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The codebooks of `t` that minimise `tr((W − Q) H (W − Q)ᵀ)` with the
/// assignments of `t` fixed, after at most `iters` conjugate-gradient steps
/// from `t`'s codebooks (f32, not yet on the stored grid), and the steps
/// taken. `p` is the backend's operator for `t` and `H`
/// ([`crate::backend::Backend::vq_codebook_system`]); the vectors of the
/// iteration (one value per centroid coordinate) stay on the host in f64.
/// Centroids no weight is assigned to keep their values.
pub fn refine(
    p: &mut dyn CodebookSystem,
    t: &VqTensor,
    w: &[f32],
    h: &[f32],
    iters: usize,
) -> Result<(Vec<f32>, usize)> {
    let (rows, cols) = (t.rows, t.cols);
    let hdiag: Vec<f32> = (0..cols).map(|i| h[i * cols + i]).collect();
    let tiled: Vec<f32> = (0..rows * cols).map(|k| hdiag[k % cols]).collect();
    let precond = p.gather(&tiled)?;
    let b = p.apply_dense(w)?;
    let mut x: Vec<f64> = t.codebooks.iter().map(|&v| v as f64).collect();
    let as_f32 = |v: &[f64]| v.iter().map(|&a| a as f32).collect::<Vec<f32>>();
    let ax = p.apply(&t.codebooks)?;
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
        let ad = p.apply(&as_f32(&dir))?;
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
    Ok((as_f32(&x), steps))
}

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
use crate::encoding::vq::svd;
use crate::error::Result;

/// Relative residual at which the conjugate gradients stop.
const TOLERANCE: f64 = 1e-5;

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The values (codebooks, or SVD factors through [`InBasis`]) that minimise
/// `tr((W − Q) H (W − Q)ᵀ)` with the assignments fixed, after at most
/// `iters` conjugate-gradient steps from `x0` (f32, not yet on the stored
/// grid), and the steps taken. `p` is the backend's operator for the
/// assignments and `H` ([`crate::backend::Backend::vq_codebook_system`]);
/// the vectors of the iteration stay on the host in f64. Values no weight
/// depends on keep theirs.
pub fn refine(
    p: &mut dyn CodebookSystem,
    x0: &[f32],
    w: &[f32],
    h: &[f32],
    rows: usize,
    cols: usize,
    iters: usize,
) -> Result<(Vec<f32>, usize)> {
    let hdiag: Vec<f32> = (0..cols).map(|i| h[i * cols + i]).collect();
    let precond = p.jacobi(&hdiag, rows)?;
    let b = p.apply_dense(w)?;
    let mut x: Vec<f64> = x0.iter().map(|&v| v as f64).collect();
    let as_f32 = |v: &[f64]| v.iter().map(|&a| a as f32).collect::<Vec<f32>>();
    let ax = p.apply(x0)?;
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

/// The operator in the coordinates of SVD-compressed codebooks: with the
/// basis `B` `[r, k]` fixed, codebooks `c = A B` are linear in the factors
/// `A`, so the normal equations in `A` are `Bᵀ`-projected ones in `c`
/// (`Pᵀ(P(A B) · H) Bᵀ`), solved by the same iteration.
pub struct InBasis<'a> {
    inner: &'a mut dyn CodebookSystem,
    basis: &'a [f32],
    k: usize,
}

impl<'a> InBasis<'a> {
    pub fn new(inner: &'a mut dyn CodebookSystem, basis: &'a [f32], k: usize) -> Self {
        Self { inner, basis, k }
    }

    fn rank(&self) -> usize {
        self.basis.len() / self.k
    }

    /// `g B^∘p` per codebook: `Σ_j g[n, j] B[i, j]^power`.
    fn project(&self, g: &[f64], power: i32) -> Vec<f64> {
        let (r, k) = (self.rank(), self.k);
        g.chunks(k)
            .flat_map(|gn| {
                (0..r).map(move |i| {
                    (0..k)
                        .map(|j| gn[j] * (self.basis[i * k + j] as f64).powi(power))
                        .sum()
                })
            })
            .collect()
    }
}

impl CodebookSystem for InBasis<'_> {
    fn apply(&mut self, a: &[f32]) -> Result<Vec<f64>> {
        let c = svd::decode(a, self.basis, self.rank(), self.k);
        let g = self.inner.apply(&c)?;
        Ok(self.project(&g, 1))
    }

    fn apply_dense(&mut self, w: &[f32]) -> Result<Vec<f64>> {
        let g = self.inner.apply_dense(w)?;
        Ok(self.project(&g, 1))
    }

    fn gather(&mut self, g: &[f32]) -> Result<Vec<f64>> {
        let g = self.inner.gather(g)?;
        Ok(self.project(&g, 1))
    }

    /// The diagonal of `B Pᵀ diag(H) P Bᵀ`: `Pᵀ diag(H) P` is diagonal.
    fn jacobi(&mut self, hdiag: &[f32], rows: usize) -> Result<Vec<f64>> {
        let d = self.inner.jacobi(hdiag, rows)?;
        Ok(self.project(&d, 2))
    }
}

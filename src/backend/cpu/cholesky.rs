//! The upper factor `U` of `H⁻¹ = UᵀU` for GPTQ, on the host in f64 with
//! `faer`: the reference the WGSL kernels (shaders/cholesky.wgsl) are
//! tested against, and their fallback when H exceeds one storage binding.
//!
//! One Cholesky and one triangular inverse (2/3·n³ flops) instead of
//! gptq.py's Cholesky, inverse and second Cholesky (4/3·n³): with `J` the
//! exchange matrix (it reverses the index order) and `L̃` the lower
//! Cholesky factor of `JHJ` (H with rows and columns reversed),
//! `R = J L̃ J` is upper triangular with `H = R Rᵀ`, hence
//! `H⁻¹ = R⁻ᵀ R⁻¹` and `U = R⁻¹ = J L̃⁻¹ J`.

use faer::linalg::triangular_inverse::invert_lower_triangular;
use faer::{get_global_parallelism, Mat, Side};

/// See [`crate::backend::Backend::inverse_cholesky_upper`]: `h` `[n, n]`
/// row-major, already damped. `None` when H is not positive definite (the
/// Cholesky meets a non-positive or non-finite pivot) or `U` is not finite
/// with a positive diagonal in f32.
pub fn inverse_cholesky_upper(h: &[f32], n: usize) -> Option<Vec<f32>> {
    if h.iter().any(|x| !x.is_finite()) {
        return None;
    }
    // JHJ: element (i, j) is H[n-1-i, n-1-j].
    let reversed = Mat::<f64>::from_fn(n, n, |i, j| h[(n - 1 - i) * n + (n - 1 - j)] as f64);
    let llt = reversed.llt(Side::Lower).ok()?;
    let mut inv = Mat::<f64>::zeros(n, n);
    invert_lower_triangular(inv.as_mut(), llt.L(), get_global_parallelism());
    // U = J L̃⁻¹ J: U[i, j] = L̃⁻¹[n-1-i, n-1-j], nonzero for j >= i.
    let mut u = vec![0f32; n * n];
    for (i, row) in u.chunks_mut(n).enumerate() {
        for (j, x) in row.iter_mut().enumerate().skip(i) {
            *x = inv[(n - 1 - i, n - 1 - j)] as f32;
        }
    }
    let usable = u.iter().all(|x| x.is_finite()) && (0..n).all(|i| u[i * n + i] > 0.0);
    usable.then_some(u)
}

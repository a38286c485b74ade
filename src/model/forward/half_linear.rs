//! [`HalfWeights`]: a float weight kept in the f16 it was stored as, for the
//! output head tied to an f16 embedding table (what `llmq-gpu quantize`
//! writes by default). Every decoded token reads the whole head; as f16 it
//! reads half the bytes of the f32 copy the lookup keeps, with the same
//! values (f16 → f32 is exact). The GEMV converts with F16C where the CPU
//! has AVX2, FMA and F16C; batches and other CPUs convert rows into f32 for
//! the blocked SGEMM or a plain dot.

use crate::error::{Error, Result};
use half::f16;
use rayon::prelude::*;

#[derive(Clone, Debug)]
pub struct HalfWeights {
    pub rows: usize,
    pub cols: usize,
    /// Row-major `[rows, cols]`.
    pub w: Vec<f16>,
}

impl HalfWeights {
    /// `w` as f16, refused unless every value is exactly an f16 (a table
    /// stored as F16 and read into f32), so nothing is rounded.
    pub fn exact(rows: usize, cols: usize, w: &[f32]) -> Option<Self> {
        if w.len() != rows * cols {
            return None;
        }
        let half: Vec<f16> = w.par_iter().map(|&v| f16::from_f32(v)).collect();
        let exact = half
            .par_iter()
            .zip(w)
            .all(|(h, &v)| h.to_f32().to_bits() == v.to_bits());
        exact.then_some(Self {
            rows,
            cols,
            w: half,
        })
    }

    pub fn dense_weights(&self) -> Vec<f32> {
        self.w.iter().map(|h| h.to_f32()).collect()
    }

    /// `y = x · Wᵀ`: `x` `[m, cols]` → `[m, rows]`.
    pub fn matmul(&self, x: &[f32], m: usize) -> Result<Vec<f32>> {
        let (rows, cols) = (self.rows, self.cols);
        if x.len() != m * cols {
            return Err(Error::Config(format!(
                "linear input has {} values, expected {m} x {cols}",
                x.len()
            )));
        }
        let to_f32 = |r0: usize, n: usize, out: &mut [f32]| {
            let src = &self.w[r0 * cols..(r0 + n) * cols];
            for (o, h) in out.iter_mut().zip(src) {
                *o = h.to_f32();
            }
        };
        if m >= crate::gemm::MIN_TOKENS {
            return Ok(crate::gemm::blocked_xwt(x, m, cols, rows, &to_f32));
        }
        let simd = crate::encoding::avx2_fma_f16c();
        let mut yt = vec![0f32; rows * m];
        yt.par_chunks_mut(64 * m).enumerate().for_each_init(
            || vec![0f32; cols],
            |row, (b, out)| {
                for (i, o) in out.chunks_exact_mut(m).enumerate() {
                    let r = 64 * b + i;
                    let wr = &self.w[r * cols..(r + 1) * cols];
                    for (t, y) in o.iter_mut().enumerate() {
                        let xt = &x[t * cols..(t + 1) * cols];
                        *y = match simd {
                            true => dot_f16(wr, xt),
                            false => {
                                to_f32(r, 1, row);
                                crate::gemm::dot(row, xt)
                            }
                        };
                    }
                }
            },
        );
        Ok(crate::gemm::transpose(&yt, m, rows))
    }
}

/// `Σ w·x` of one f16 row; the caller checked [`crate::encoding::avx2_fma_f16c`].
fn dot_f16(w: &[f16], x: &[f32]) -> f32 {
    assert!(w.len() == x.len() && crate::encoding::avx2_fma_f16c());
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX2, FMA and F16C checked above; loads stay within the
    // slices (whole chunks of 16, then a scalar tail).
    unsafe {
        dot_f16_avx2(w, x)
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("crate::encoding::avx2_fma_f16c() is false off x86-64")
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_f16_avx2(w: &[f16], x: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let full = w.len() / 16 * 16;
    for k in (0..full).step_by(16) {
        let h0 = _mm256_cvtph_ps(_mm_loadu_si128(w.as_ptr().add(k).cast()));
        let h1 = _mm256_cvtph_ps(_mm_loadu_si128(w.as_ptr().add(k + 8).cast()));
        a0 = _mm256_fmadd_ps(h0, _mm256_loadu_ps(x.as_ptr().add(k)), a0);
        a1 = _mm256_fmadd_ps(h1, _mm256_loadu_ps(x.as_ptr().add(k + 8)), a1);
    }
    let tail: f32 = w[full..]
        .iter()
        .zip(&x[full..])
        .map(|(h, v)| h.to_f32() * v)
        .sum();
    crate::encoding::affine::simd::hsum(_mm256_add_ps(a0, a1)) + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values on the f16 grid (k/64, |k| < 2048: exact in f16).
    fn grid(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7919 + seed * 104_729) % 4001) as f32 / 64.0 - 31.25)
            .collect()
    }

    #[test]
    fn matmul_equals_the_f32_weights_for_gemv_and_gemm() {
        let (rows, cols) = (37, 100);
        let w = grid(rows * cols, 1);
        let h = HalfWeights::exact(rows, cols, &w).expect("on the f16 grid");
        for m in [1, 3, crate::gemm::MIN_TOKENS + 1] {
            let x: Vec<f32> = grid(m * cols, 2).iter().map(|v| v / 31.0).collect();
            let want = crate::backend::cpu::ops::matmul_t(&x, &w, m, cols, rows);
            let got = h.matmul(&x, m).unwrap();
            let scale: f32 = w.iter().map(|v| v.abs()).sum::<f32>() / rows as f32;
            for (g, e) in got.iter().zip(&want) {
                assert!((g - e).abs() <= 1e-5 * scale, "m {m}: {g} vs {e}");
            }
        }
        assert!(h.matmul(&[0.0; 99], 1).is_err());
    }

    #[test]
    fn values_off_the_f16_grid_are_refused() {
        let mut w = grid(64, 3);
        assert!(HalfWeights::exact(8, 8, &w).is_some());
        w[5] = 0.1; // not an f16
        assert!(HalfWeights::exact(8, 8, &w).is_none());
        assert!(HalfWeights::exact(8, 9, &w).is_none());
    }
}

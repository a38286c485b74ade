//! `Backend::inverse_cholesky_upper`: the upper factor `U` of `H⁻¹ = UᵀU`
//! GPTQ needs, on the CPU (f64 faer, the reference) and in WGSL (f32).
//!
//! Bounds:
//! - CPU, well-conditioned H (cond ≈ 10): `max |UᵀU·H − I| ≤ 1e-5`, computed
//!   in f64. U is rounded to f32 once (relative 6e-8 per entry), and that
//!   rounding is amplified by about cond(H) and a few √n summation terms.
//! - GPU vs CPU for cond(H) ≤ 1e4 (measured with faer's eigenvalues):
//!   `max |U_gpu − U_cpu| / max |U_cpu| ≤ 1e-3`. An f32 Cholesky has a
//!   backward error of a few ε·‖H‖ (ε = 6e-8); the forward error of the
//!   factor and of its inverse grows with cond(H), so about
//!   ε·cond(H)·(small factor) ≈ 6e-4 worst case at 1e4: 1e-3 leaves room
//!   while still catching a wrong sign, index or missing update. Measured
//!   on lavapipe: about 2e-7 at cond ≈ 10 and 5e-5 to 1.1e-4 at cond 1e4.
//! - A matrix with a negative eigenvalue gives `Ok(None)` on both.
//! - Under a binding limit smaller than H the GPU backend falls back to the
//!   CPU implementation: bit-identical to it.

mod common;

use faer::{Mat, Side};
use llmq_gpu::backend::{Backend, CpuBackend, GpuBackend};
use rand::Rng;
use std::sync::Arc;
use std::time::Instant;

/// Standard normal via Box–Muller.
fn normal(rng: &mut impl Rng) -> f64 {
    let u1: f64 = rng.gen::<f64>().max(1e-300);
    let u2: f64 = rng.gen();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// `A·Aᵀ/k + damp·I` with `A` `[n, k]` standard normal, as f32. With
/// `k ≥ 4n` it is well conditioned (eigenvalues in about [0.25, 2.25]); with
/// `k < n` it is singular before damping, so `damp` sets the conditioning.
fn random_spd(rng: &mut impl Rng, n: usize, k: usize, damp: f64) -> Vec<f32> {
    let a: Vec<f64> = (0..n * k).map(|_| normal(rng)).collect();
    let mut h = vec![0f32; n * n];
    for i in 0..n {
        for j in 0..=i {
            let s: f64 = (0..k).map(|t| a[i * k + t] * a[j * k + t]).sum::<f64>() / k as f64;
            let v = (s + if i == j { damp } else { 0.0 }) as f32;
            h[i * n + j] = v;
            h[j * n + i] = v;
        }
    }
    h
}

/// A singular `A·Aᵀ/k` (`k = n/2`) plus the damping that brings its
/// condition number to about `target`.
fn with_condition(rng: &mut impl Rng, n: usize, target: f64) -> Vec<f32> {
    let mut h = random_spd(rng, n, n.div_ceil(2), 0.0);
    let m = Mat::<f64>::from_fn(n, n, |i, j| h[i * n + j] as f64);
    let ev = m.self_adjoint_eigenvalues(Side::Lower).unwrap();
    let hi = ev.iter().fold(0f64, |m, &e| m.max(e));
    let damp = hi / (target - 1.0);
    for i in 0..n {
        h[i * n + i] += damp as f32;
    }
    h
}

/// Condition number of a symmetric positive definite `h`.
fn condition(h: &[f32], n: usize) -> f64 {
    let m = Mat::<f64>::from_fn(n, n, |i, j| h[i * n + j] as f64);
    let ev = m.self_adjoint_eigenvalues(Side::Lower).unwrap();
    let (lo, hi) = ev
        .iter()
        .fold((f64::INFINITY, 0f64), |(lo, hi), &e| (lo.min(e), hi.max(e)));
    assert!(lo > 0.0, "not positive definite: smallest eigenvalue {lo}");
    hi / lo
}

/// `max |UᵀU·H − I|` in f64.
fn residual(u: &[f32], h: &[f32], n: usize) -> f64 {
    let u = Mat::<f64>::from_fn(n, n, |i, j| u[i * n + j] as f64);
    let h = Mat::<f64>::from_fn(n, n, |i, j| h[i * n + j] as f64);
    let r = u.transpose() * &u * &h;
    let mut worst = 0f64;
    for i in 0..n {
        for j in 0..n {
            let want = if i == j { 1.0 } else { 0.0 };
            worst = worst.max((r[(i, j)] - want).abs());
        }
    }
    worst
}

fn assert_upper(u: &[f32], n: usize, who: &str) {
    for i in 0..n {
        assert!(u[i * n + i] > 0.0, "{who}: U[{i},{i}] = {}", u[i * n + i]);
        for j in 0..i {
            assert_eq!(u[i * n + j], 0.0, "{who}: U[{i},{j}] below the diagonal");
        }
    }
}

/// `max |a − b| / max |b|`.
fn max_rel_diff(a: &[f32], b: &[f32]) -> f64 {
    let scale = b.iter().fold(0f64, |m, &v| m.max(v.abs() as f64));
    let diff = a
        .iter()
        .zip(b)
        .fold(0f64, |m, (&x, &y)| m.max((x as f64 - y as f64).abs()));
    diff / scale
}

const SIZES: [usize; 5] = [1, 7, 64, 100, 200];

#[test]
fn cpu_factor_inverts_well_conditioned_h() {
    let mut rng = common::rng("cpu_factor_inverts_well_conditioned_h");
    for n in SIZES {
        let h = random_spd(&mut rng, n, 4 * n, 0.01);
        let u = CpuBackend.inverse_cholesky_upper(&h, n).unwrap().unwrap();
        assert_upper(&u, n, "cpu");
        let res = residual(&u, &h, n);
        eprintln!(
            "n = {n}: cond {:.1}, max |UᵀUH − I| = {res:.2e}",
            condition(&h, n)
        );
        assert!(res <= 1e-5, "n = {n}: residual {res:.3e}");
    }
}

#[test]
fn gpu_factor_matches_cpu() {
    let gpu = GpuBackend::new(common::gpu());
    let mut rng = common::rng("gpu_factor_matches_cpu");
    for n in SIZES {
        // Well conditioned, then about 1e4 (singular A·Aᵀ plus small damping).
        let cases = [
            ("well", random_spd(&mut rng, n, 4 * n, 0.01)),
            ("1e4", with_condition(&mut rng, n, 1e4)),
        ];
        for (what, h) in cases {
            let cond = condition(&h, n);
            assert!(cond <= 1.2e4, "n = {n}: test matrix has cond {cond:.3e}");
            let want = CpuBackend.inverse_cholesky_upper(&h, n).unwrap().unwrap();
            let t = Instant::now();
            let got = gpu.inverse_cholesky_upper(&h, n).unwrap().unwrap();
            let secs = t.elapsed().as_secs_f64();
            assert_upper(&got, n, "gpu");
            let d = max_rel_diff(&got, &want);
            eprintln!(
                "n = {n} ({what}): cond {cond:.2e}, GPU vs CPU max rel diff {d:.2e}, \
                 GPU residual {:.2e}, {secs:.3} s on {}",
                residual(&got, &h, n),
                gpu.name()
            );
            assert!(d <= 1e-3, "n = {n}, cond {cond:.2e}: GPU vs CPU {d:.3e}");
        }
    }
}

/// `h − 2·trace(h)·v vᵀ` for a random unit `v`: `vᵀ H' v < 0`.
fn with_negative_eigenvalue(rng: &mut impl Rng, h: &[f32], n: usize) -> Vec<f32> {
    let v: Vec<f64> = (0..n).map(|_| normal(rng)).collect();
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    let trace: f64 = (0..n).map(|i| h[i * n + i] as f64).sum();
    let mut out = h.to_vec();
    for i in 0..n {
        for j in 0..n {
            out[i * n + j] -= (2.0 * trace * v[i] * v[j] / (norm * norm)) as f32;
        }
    }
    out
}

#[test]
fn not_positive_definite_gives_none_on_both() {
    let gpu = GpuBackend::new(common::gpu());
    let mut rng = common::rng("not_positive_definite_gives_none_on_both");
    let backends: [&dyn Backend; 2] = [&CpuBackend, &gpu];
    for n in [1, 7, 64, 100] {
        let h = random_spd(&mut rng, n, 4 * n, 0.01);
        let bad = with_negative_eigenvalue(&mut rng, &h, n);
        for b in backends {
            assert!(
                b.inverse_cholesky_upper(&bad, n).unwrap().is_none(),
                "{}: n = {n} with a negative eigenvalue was factored",
                b.name()
            );
        }
    }
    // A non-finite entry and a zero pivot.
    let mut h = random_spd(&mut rng, 40, 160, 0.01);
    h[5 * 40 + 5] = f32::NAN;
    let zero_last = {
        let mut z = random_spd(&mut rng, 40, 160, 0.01);
        for i in 0..40 {
            z[39 * 40 + i] = 0.0;
            z[i * 40 + 39] = 0.0;
        }
        z
    };
    for b in backends {
        assert!(b.inverse_cholesky_upper(&h, 40).unwrap().is_none());
        assert!(b.inverse_cholesky_upper(&zero_last, 40).unwrap().is_none());
        assert!(b.inverse_cholesky_upper(&[-1.0], 1).unwrap().is_none());
    }
}

#[test]
fn bad_shapes_are_errors() {
    let gpu = GpuBackend::new(common::gpu());
    let backends: [&dyn Backend; 2] = [&CpuBackend, &gpu];
    for b in backends {
        assert!(b.inverse_cholesky_upper(&[1.0; 5], 2).is_err());
        assert!(b.inverse_cholesky_upper(&[], 0).is_err());
    }
}

#[test]
fn gpu_falls_back_to_cpu_above_the_binding_limit() {
    let ctx = common::fresh_gpu();
    let n = 64;
    // H is 16 KiB: above a 4 KiB binding.
    ctx.set_max_binding(4096);
    let gpu = GpuBackend::new(Arc::new(ctx));
    let mut rng = common::rng("gpu_falls_back_to_cpu_above_the_binding_limit");
    let h = random_spd(&mut rng, n, n / 2, 1e-3);
    let want = CpuBackend.inverse_cholesky_upper(&h, n).unwrap().unwrap();
    let got = gpu.inverse_cholesky_upper(&h, n).unwrap().unwrap();
    assert_eq!(got, want, "the fallback is the CPU implementation");
    let bad = with_negative_eigenvalue(&mut rng, &h, n);
    assert!(gpu.inverse_cholesky_upper(&bad, n).unwrap().is_none());
}

//! `Backend::quadratic_traces`: `tr(A H Aᵀ)` for GPTQ's error report, on
//! the CPU (f32 SGEMM, f64 dot) and in WGSL (fused tiles of `A·H`, one f32
//! partial per workgroup, summed in f64 on the host).
//!
//! Bound: relative error ≤ 1e-4 against an f64 evaluation of the same f32
//! inputs, for both backends, and GPU vs CPU ≤ 1e-4. Both accumulate `A·H`
//! in f32 over `cols` terms (relative error about √cols·6e-8 ≈ 1e-6 per
//! entry for positive-semidefinite H and the matrices used here: a weight
//! and weight-sized noise, as in W − Ŵ), so 1e-4 leaves a wide margin and
//! still catches a lost tile, chunk or row. Measured on lavapipe: at most
//! 1.7e-7 (vs f64) and 1.5e-7 (GPU vs CPU).

mod common;

use llmq_gpu::backend::{Backend, CpuBackend, GpuBackend};
use llmq_gpu::Error;
use rand::Rng;
use std::sync::Arc;

const TOL: f64 = 1e-4;

/// `2/n · XᵀX` for `n` tokens of `cols` correlated features (8 latent
/// factors plus noise, some features scaled up), so H is far from diagonal.
fn random_hessian(rng: &mut impl Rng, cols: usize, n: usize) -> Vec<f32> {
    let latent = 8;
    let mix: Vec<f64> = (0..latent * cols).map(|_| rng.gen::<f64>() - 0.5).collect();
    let scale: Vec<f64> = (0..cols)
        .map(|_| if rng.gen::<f64>() < 0.05 { 10.0 } else { 1.0 })
        .collect();
    let mut x = vec![0f64; n * cols];
    for t in 0..n {
        let z: Vec<f64> = (0..latent).map(|_| rng.gen::<f64>() - 0.5).collect();
        for c in 0..cols {
            let s: f64 = (0..latent).map(|l| z[l] * mix[l * cols + c]).sum();
            x[t * cols + c] = scale[c] * (s + 0.3 * (rng.gen::<f64>() - 0.5));
        }
    }
    let mut h = vec![0f32; cols * cols];
    for i in 0..cols {
        for j in 0..=i {
            let s: f64 = (0..n).map(|t| x[t * cols + i] * x[t * cols + j]).sum();
            let v = (2.0 * s / n as f64) as f32;
            h[i * cols + j] = v;
            h[j * cols + i] = v;
        }
    }
    h
}

/// `tr(A H Aᵀ)` in f64 from the f32 inputs.
fn reference(a: &[f32], h: &[f32], cols: usize) -> f64 {
    a.chunks(cols)
        .map(|row| {
            (0..cols)
                .map(|i| {
                    let hr = &h[i * cols..(i + 1) * cols];
                    let s: f64 = row.iter().zip(hr).map(|(&x, &y)| x as f64 * y as f64).sum();
                    row[i] as f64 * s
                })
                .sum::<f64>()
        })
        .sum()
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-30)
}

/// A weight, W − Ŵ-like noise and a one-row matrix, of `rows` rows each
/// (the second has `rows / 2 + 1`), plus an empty one.
fn random_mats(rng: &mut impl Rng, rows: usize, cols: usize) -> Vec<Vec<f32>> {
    vec![
        common::random_weights(rng, rows * cols),
        (0..(rows / 2 + 1) * cols)
            .map(|_| (rng.gen::<f32>() - 0.5) * 1e-3)
            .collect(),
        common::random_weights(rng, cols),
        Vec::new(),
    ]
}

/// Runs both backends on the same inputs and checks them against the f64
/// reference and each other; returns the largest relative difference seen.
fn check(label: &str, gpu: &GpuBackend, h: &[f32], cols: usize, mats: &[Vec<f32>]) -> f64 {
    let refs: Vec<&[f32]> = mats.iter().map(Vec::as_slice).collect();
    let c = CpuBackend.quadratic_traces(h, cols, &refs).unwrap();
    let g = gpu.quadratic_traces(h, cols, &refs).unwrap();
    assert_eq!((c.len(), g.len()), (mats.len(), mats.len()));
    let mut worst = 0f64;
    for (i, a) in mats.iter().enumerate() {
        let want = reference(a, h, cols);
        if a.is_empty() {
            assert_eq!((c[i], g[i]), (0.0, 0.0), "{label}: empty matrix {i}");
            continue;
        }
        assert!(want > 0.0, "{label}: H is positive semidefinite");
        let (ec, eg, egc) = (rel(c[i], want), rel(g[i], want), rel(g[i], c[i]));
        eprintln!(
            "{label}: matrix {i} [{}, {cols}]: f64 {want:.6e}, cpu rel {ec:.2e}, gpu rel {eg:.2e}, \
             gpu vs cpu {egc:.2e}",
            a.len() / cols
        );
        assert!(ec <= TOL, "{label}: matrix {i}: CPU {} vs f64 {want}", c[i]);
        assert!(eg <= TOL, "{label}: matrix {i}: GPU {} vs f64 {want}", g[i]);
        assert!(
            egc <= TOL,
            "{label}: matrix {i}: GPU {} vs CPU {}",
            g[i],
            c[i]
        );
        worst = worst.max(eg).max(egc);
    }
    worst
}

/// Shapes not multiples of the 64×64 tile, and one that is.
#[test]
fn quadratic_traces_gpu_matches_cpu() {
    let mut rng = common::rng("quadratic_traces_gpu_matches_cpu");
    let gpu = GpuBackend::new(common::gpu());
    for &(rows, cols) in &[(1, 7), (70, 100), (128, 64), (150, 201)] {
        let h = random_hessian(&mut rng, cols, 3 * cols);
        let mats = random_mats(&mut rng, rows, cols);
        let worst = check(&format!("{rows}x{cols}"), &gpu, &h, cols, &mats);
        eprintln!("{rows}x{cols}: worst relative difference {worst:.2e} (bound {TOL:e})");
    }
}

/// Under a binding limit of 17 rows, H (150 columns) is 9 chunks of rows
/// and the 130-row matrix 8: same traces as the CPU.
#[test]
fn quadratic_traces_gpu_split_bindings_match_cpu() {
    let mut rng = common::rng("quadratic_traces_gpu_split_bindings_match_cpu");
    let ctx = common::fresh_gpu();
    let (rows, cols) = (130, 150);
    ctx.set_max_binding((17 * cols * 4) as u64);
    assert_eq!(ctx.max_binding(), (17 * cols * 4) as u64);
    let gpu = GpuBackend::new(Arc::new(ctx));
    let h = random_hessian(&mut rng, cols, 2 * cols);
    let mats = random_mats(&mut rng, rows, cols);
    let worst = check("split", &gpu, &h, cols, &mats);
    eprintln!("split: worst relative difference {worst:.2e} (bound {TOL:e})");
}

/// Inconsistent shapes are a `Config` error naming the problem on both
/// backends, never a panic.
#[test]
fn quadratic_traces_reject_bad_shapes() {
    let gpu = GpuBackend::new(common::gpu());
    let h = vec![1f32; 16];
    let a = vec![1f32; 8];
    let odd = vec![1f32; 7];
    let backends: [&dyn Backend; 2] = [&CpuBackend, &gpu];
    for b in backends {
        let cases = [
            (&h[..], 0, "cols > 0"),
            (&h[..15], 4, "H has 15 values"),
            (&h[..], 4, "matrix 1 has 7 values"),
        ];
        for (h, cols, want) in cases {
            match b.quadratic_traces(h, cols, &[&a, &odd]) {
                Err(Error::Config(msg)) => {
                    assert!(msg.contains(want), "{}: {msg:?} lacks {want:?}", b.name())
                }
                other => panic!(
                    "{}: {want}: expected a Config error, got {other:?}",
                    b.name()
                ),
            }
        }
        assert_eq!(b.quadratic_traces(&h, 4, &[]).unwrap(), Vec::<f64>::new());
    }
}

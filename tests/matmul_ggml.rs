//! Packed matmul on llama.cpp's blocks (every type llmq-gpu reads and
//! writes): the WGSL kernels (shaders/ggml_decode.wgsl inside the GEMV and
//! the GEMM of shaders/matmul.wgsl) and the CPU path against an f64
//! reference over the CPU dequantization (src/encoding/ggml/, which
//! tests/gguf_vs_reference.rs checks against gguf-py), on fresh random
//! weights quantized by each type's own quantizer.
//!
//! Decoding is checked exactly: with one-hot inputs each output is one
//! weight times 1.0 plus zeros, so every weight the kernels decode must
//! equal the CPU's exactly. Random inputs then check the sums, within
//! `1e-4 · Σ|w||x|` per output (f32 accumulation in different orders;
//! cols ≤ 512 here, see tests/matmul_cross_check.rs for the argument).

mod common;

use llmq_gpu::backend::gpu::matmul::{self as gpu_matmul, GpuQuantWeights};
use llmq_gpu::backend::{Backend, CpuBackend, GpuBackend};
use llmq_gpu::encoding::ggml::{self, GgmlTensor, GgmlType};
use llmq_gpu::encoding::EncodedTensor;
use rand::Rng;

const TYPES: [&str; 11] = [
    "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "IQ4_NL", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
];

fn random_blocks(rng: &mut impl Rng, ty: GgmlType, rows: usize, cols: usize) -> GgmlTensor {
    // Rows of different scales and an offset, so mins and scales vary.
    let x: Vec<f32> = (0..rows * cols)
        .map(|i| {
            let r = (i / cols) as f32;
            common::normal(rng) * (0.02 + 0.01 * (r % 7.0)) + 0.003 * (r % 3.0)
        })
        .collect();
    GgmlTensor {
        ty,
        rows,
        cols,
        data: ggml::quantize("w", ty, &x, cols).unwrap(),
    }
}

fn reference(
    w: &[f32],
    x: &[f32],
    rows: usize,
    cols: usize,
    tokens: usize,
) -> (Vec<f64>, Vec<f64>) {
    let (mut y, mut mag) = (vec![0f64; tokens * rows], vec![0f64; tokens * rows]);
    for t in 0..tokens {
        for r in 0..rows {
            let (wr, xt) = (&w[r * cols..(r + 1) * cols], &x[t * cols..(t + 1) * cols]);
            y[t * rows + r] = wr.iter().zip(xt).map(|(&a, &b)| a as f64 * b as f64).sum();
            mag[t * rows + r] = wr
                .iter()
                .zip(xt)
                .map(|(&a, &b)| (a as f64 * b as f64).abs())
                .sum();
        }
    }
    (y, mag)
}

fn check(label: &str, got: &[f32], want: &[f64], mag: &[f64]) {
    common::check_within_magnitudes(label, got, want, mag)
}

/// Every weight decoded on the GPU equals the CPU's: one-hot inputs, the
/// GEMM (all columns) and the GEMV (a few).
#[test]
fn gpu_decodes_every_block_type_exactly() {
    let ctx = common::gpu();
    let mut rng = common::rng("gpu_decodes_every_block_type_exactly");
    for name in TYPES {
        let ty = GgmlType::from_name(name).unwrap();
        let cols = if ty.block_size() == 256 { 512 } else { 96 };
        let rows = 19;
        let g = random_blocks(&mut rng, ty, rows, cols);
        let w = g.dequantize().unwrap();
        let gw = GpuQuantWeights::upload_ggml(&ctx, &g).unwrap();
        // Token t picks column t: y[t, r] = W[r, t].
        let mut onehot = vec![0f32; cols * cols];
        for t in 0..cols {
            onehot[t * cols + t] = 1.0;
        }
        let got = gpu_matmul::matmul_resident(&ctx, &gw, &onehot, cols).unwrap();
        for t in 0..cols {
            for r in 0..rows {
                // == on values: a sum with zeros turns −0 into +0.
                assert!(
                    got[t * rows + r] == w[r * cols + t],
                    "{name} gemm: W[{r}, {t}] decoded {} vs {}",
                    got[t * rows + r],
                    w[r * cols + t]
                );
            }
        }
        for t in [0, 1, cols / 2 + 3, cols - 1] {
            let got = gpu_matmul::matmul_resident(&ctx, &gw, &onehot[t * cols..(t + 1) * cols], 1)
                .unwrap();
            for r in 0..rows {
                assert!(got[r] == w[r * cols + t], "{name} gemv: W[{r}, {t}]");
            }
        }
    }
}

/// Sums on random inputs: the GPU's GEMV and GEMM and the CPU's two paths
/// (row GEMV below 8 tokens, blocked SGEMM from 8).
#[test]
fn ggml_matmul_matches_reference_on_both_backends() {
    let ctx = common::gpu();
    let mut rng = common::rng("ggml_matmul_matches_reference_on_both_backends");
    for name in TYPES {
        let ty = GgmlType::from_name(name).unwrap();
        let cols = if ty.block_size() == 256 { 512 } else { 160 };
        let rows = 37;
        let g = random_blocks(&mut rng, ty, rows, cols);
        let w = g.dequantize().unwrap();
        let gw = GpuQuantWeights::upload_ggml(&ctx, &g).unwrap();
        for tokens in [1, 3, 70] {
            let x: Vec<f32> = (0..tokens * cols)
                .map(|_| rng.gen_range(-1.0f32..1.0))
                .collect();
            let (want, mag) = reference(&w, &x, rows, cols, tokens);
            let label = format!("{name} [{rows}x{cols}] tokens {tokens}");
            check(
                &format!("cpu {label}"),
                &g.matmul(&x, tokens).unwrap(),
                &want,
                &mag,
            );
            let gpu = gpu_matmul::matmul_resident(&ctx, &gw, &x, tokens).unwrap();
            check(&format!("gpu {label}"), &gpu, &want, &mag);
        }
    }
}

/// Weights split by rows under a small binding limit, and the resident
/// linear of both backends (what GPTQ's calibration forward and the
/// forward pass use).
#[test]
fn split_and_resident_ggml_weights_match() {
    let ctx = common::fresh_gpu();
    let mut rng = common::rng("split_and_resident_ggml_weights_match");
    ctx.set_max_binding(2048);
    for name in ["Q4_K", "Q5_0", "Q6_K"] {
        let ty = GgmlType::from_name(name).unwrap();
        let g = random_blocks(&mut rng, ty, 41, 256);
        let gw = GpuQuantWeights::upload_ggml(&ctx, &g).unwrap();
        assert!(gw.n_chunks() > 1, "{name}: weight was not split");
        let x: Vec<f32> = (0..9 * 256).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
        let (want, mag) = reference(&g.dequantize().unwrap(), &x, 41, 256, 9);
        check(
            &format!("split {name}"),
            &gpu_matmul::matmul_resident(&ctx, &gw, &x, 9).unwrap(),
            &want,
            &mag,
        );
    }
    let gpu = GpuBackend::new(common::gpu());
    let g = random_blocks(&mut rng, GgmlType::Q4_1, 45, 96);
    let encoded = EncodedTensor::Ggml(g.clone());
    let backends: [&dyn Backend; 2] = [&CpuBackend, &gpu];
    for backend in backends {
        let linear = backend.resident_linear(&encoded).unwrap();
        assert_eq!(linear.shape(), [45, 96]);
        let x: Vec<f32> = (0..3 * 96).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
        let (want, mag) = reference(&g.dequantize().unwrap(), &x, 45, 96, 3);
        check(&backend.name(), &linear.apply(&x, 3).unwrap(), &want, &mag);
    }
}

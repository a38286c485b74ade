//! Dequant-matmul: GPU kernels (GEMV and GEMM) and the fast CPU path against
//! a plain f64 reference (dequantize, then naive dot), on fresh random inputs.
//!
//! Tolerance: both fast paths accumulate in f32 in different orders. Each
//! product and partial sum carries a relative error of at most a few ulp
//! (2^-24 ≈ 6e-8) times the number of terms summed serially (≤ cols), bounded
//! by Σ|w||x|; the group factoring `s·(Σqx − zΣx)` adds a cancellation term
//! of the same order, bounded by Σ s·(|q|+|z|)|x|. So per output
//! `|y − y_ref| ≤ 1e-4 · (Σ s·(|q|+|z|)|x| + 1e-6)` (cols ≤ 640 here, so
//! 1e-4 leaves a factor > 2 over cols·2^-24·4).

mod common;

use llmq_gpu::backend::gpu::matmul::{self as gpu_matmul, GpuQuantWeights};
use llmq_gpu::backend::gpu::GpuContext;
use llmq_gpu::backend::{Backend, CpuBackend, GpuBackend};
use llmq_gpu::encoding::affine::matmul as cpu_matmul;
use llmq_gpu::encoding::affine::packing::{pack_codes, unpack_code};
use llmq_gpu::encoding::affine::scheme::{Granularity, QuantScheme};
use llmq_gpu::encoding::QuantizedTensor;
use rand::Rng;

fn random_tensor(
    rng: &mut impl Rng,
    rows: usize,
    cols: usize,
    scheme: QuantScheme,
) -> QuantizedTensor {
    let maxq = scheme.max_code();
    let codes: Vec<u32> = (0..rows * cols).map(|_| rng.gen_range(0..=maxq)).collect();
    let n = rows * scheme.groups_per_row(cols);
    let scales = (0..n).map(|_| rng.gen_range(0.001f32..0.05)).collect();
    let zeros = (0..n)
        .map(|_| {
            if scheme.symmetric {
                1u8 << (scheme.bits - 1)
            } else {
                rng.gen_range(0..=maxq) as u8
            }
        })
        .collect();
    QuantizedTensor {
        rows,
        cols,
        scheme,
        packed: pack_codes(&codes, rows, cols, scheme.bits),
        scales,
        zeros,
    }
}

/// Per-output bound Σ s·(|q|+|z|)|x| used by the tolerance (see the file comment).
fn magnitudes(q: &QuantizedTensor, x: &[f32], tokens: usize) -> Vec<f64> {
    let (rows, cols, wpr) = (q.rows, q.cols, q.words_per_row());
    let (glen, gpr) = (q.scheme.group_len(cols), q.n_groups());
    let mut m = vec![0f64; tokens * rows];
    for r in 0..rows {
        let row = &q.packed[r * wpr..(r + 1) * wpr];
        for t in 0..tokens {
            m[t * rows + r] = (0..cols)
                .map(|j| {
                    let g = r * gpr + j / glen;
                    let qz = unpack_code(row, q.scheme.bits, j) as f64 + q.zeros[g] as f64;
                    q.scales[g] as f64 * qz * (x[t * cols + j] as f64).abs()
                })
                .sum();
        }
    }
    m
}

fn check(label: &str, got: &[f32], want: &[f64], mag: &[f64]) {
    common::check_within_magnitudes(label, got, want, mag)
}

/// One case on the CPU fast path and on `ctx`.
fn case(
    ctx: &GpuContext,
    rng: &mut impl Rng,
    rows: usize,
    cols: usize,
    tokens: usize,
    scheme: QuantScheme,
) {
    let q = random_tensor(rng, rows, cols, scheme);
    let x: Vec<f32> = (0..tokens * cols)
        .map(|_| rng.gen_range(-1.0f32..1.0))
        .collect();
    let want = cpu_matmul::matmul_reference(&q, &x, tokens).unwrap();
    let mag = magnitudes(&q, &x, tokens);
    let label = format!("{} [{rows}x{cols}] tokens {tokens}", scheme.label());
    // The default path (SIMD where the CPU has it) and the portable loops.
    let cpu = cpu_matmul::matmul(&q, &x, tokens).unwrap();
    check(&format!("cpu {label}"), &cpu, &want, &mag);
    let cpu = cpu_matmul::matmul_with(&q, &x, tokens, false).unwrap();
    check(&format!("cpu scalar {label}"), &cpu, &want, &mag);
    let gpu = gpu_matmul::matmul(ctx, &q, &x, tokens).unwrap();
    check(&format!("gpu {label}"), &gpu, &want, &mag);
}

fn schemes(bits: u32) -> Vec<QuantScheme> {
    let mut v = Vec::new();
    for sym in [true, false] {
        for g in [
            Granularity::PerChannel,
            Granularity::Group(32),
            Granularity::Group(64),
        ] {
            v.push(QuantScheme::new(bits, sym, g).unwrap());
        }
    }
    v.push(QuantScheme::new(bits, false, Granularity::Group(128)).unwrap());
    v
}

#[test]
fn q4_q8_gemv_matches_reference() {
    let ctx = common::gpu();
    let mut rng = common::rng("q4_q8_gemv_matches_reference");
    for bits in [4, 8] {
        for s in schemes(bits) {
            // 67 rows: not a multiple of the 4-row GEMV block.
            case(&ctx, &mut rng, 67, 640, 1, s);
        }
        let s = QuantScheme::new(bits, false, Granularity::Group(128)).unwrap();
        case(&ctx, &mut rng, 9, 2560, 1, s); // more than one 2048-float x chunk
        case(&ctx, &mut rng, 13, 256, 3, s); // GEMV over several tokens
    }
}

#[test]
fn q4_q8_gemm_matches_reference() {
    let ctx = common::gpu();
    let mut rng = common::rng("q4_q8_gemm_matches_reference");
    for bits in [4, 8] {
        for s in schemes(bits) {
            case(&ctx, &mut rng, 67, 384, 70, s);
        }
    }
}

#[test]
fn odd_bits_and_groups_match_reference() {
    let ctx = common::gpu();
    let mut rng = common::rng("odd_bits_and_groups_match_reference");
    for bits in [2, 3, 5] {
        let s = QuantScheme::new(bits, false, Granularity::Group(32)).unwrap();
        case(&ctx, &mut rng, 67, 160, 1, s);
        case(&ctx, &mut rng, 35, 96, 9, s);
    }
    // Groups that do not align with 32-code units, and cols not a multiple of 8.
    for bits in [3, 4, 8] {
        let s = QuantScheme::new(bits, false, Granularity::Group(20)).unwrap();
        case(&ctx, &mut rng, 21, 100, 1, s);
        case(&ctx, &mut rng, 21, 100, 6, s);
        let s = QuantScheme::new(bits, true, Granularity::PerChannel).unwrap();
        case(&ctx, &mut rng, 19, 77, 1, s);
        case(&ctx, &mut rng, 19, 77, 5, s);
    }
}

/// GPTQ's ragged last group: `group_len` not dividing `cols` leaves a
/// shorter last group per row (SmolLM2: 576 = 4·128 + 64).
#[test]
fn ragged_last_group_matches_reference() {
    let ctx = common::gpu();
    let mut rng = common::rng("ragged_last_group_matches_reference");
    for bits in [4, 8] {
        for sym in [false, true] {
            for (cols, g) in [(576, 128), (100, 32), (100, 64), (1000, 128), (99, 32)] {
                let s = QuantScheme::new(bits, sym, Granularity::Group(g)).unwrap();
                for tokens in [1, 3, 70] {
                    case(&ctx, &mut rng, 23, cols, tokens, s);
                }
            }
        }
    }
    // Other widths take the generic CPU path and the GPU's unit-by-unit one.
    for bits in [2, 3, 5] {
        let s = QuantScheme::new(bits, false, Granularity::Group(64)).unwrap();
        case(&ctx, &mut rng, 21, 100, 1, s);
        case(&ctx, &mut rng, 21, 576, 5, s);
    }
}

/// Row counts around the 4-row SIMD block and the per-job row split.
#[test]
fn gemv_row_blocks_match_reference() {
    let ctx = common::gpu();
    let mut rng = common::rng("gemv_row_blocks_match_reference");
    for bits in [4, 8] {
        let s = QuantScheme::new(bits, false, Granularity::Group(128)).unwrap();
        for rows in [1, 2, 3, 4, 5, 63, 64, 65, 257, 1031] {
            case(&ctx, &mut rng, rows, 384, 1, s);
        }
    }
}

#[test]
fn split_weights_and_tokens_match_reference() {
    let ctx = common::fresh_gpu();
    let mut rng = common::rng("split_weights_and_tokens_match_reference");
    // 160 cols at 4 bits: 80 bytes of codes per row; 2 KiB bindings give
    // 25-row weight chunks and 3-token activation chunks.
    ctx.set_max_binding(2048);
    for (bits, tokens) in [(4, 1), (4, 70), (8, 2), (8, 9), (3, 7)] {
        let s = QuantScheme::new(bits, false, Granularity::Group(32)).unwrap();
        let q = random_tensor(&mut rng, 67, 160, s);
        let w = GpuQuantWeights::upload(&ctx, &q).unwrap();
        assert!(w.n_chunks() > 1, "weight was not split");
        let x: Vec<f32> = (0..tokens * 160)
            .map(|_| rng.gen_range(-1.0f32..1.0))
            .collect();
        let want = cpu_matmul::matmul_reference(&q, &x, tokens).unwrap();
        let got = gpu_matmul::matmul_resident(&ctx, &w, &x, tokens).unwrap();
        check(
            &format!("split W{bits} tokens {tokens}"),
            &got,
            &want,
            &magnitudes(&q, &x, tokens),
        );
    }
}

/// `Backend::resident_linear` (GPTQ's calibration forward: one upload, many
/// batches) gives what `Backend::matmul` gives, batch after batch, on both
/// backends, and reports the weight's shape.
#[test]
fn resident_linear_matches_matmul() {
    let gpu = GpuBackend::new(common::gpu());
    let mut rng = common::rng("resident_linear_matches_matmul");
    let s = QuantScheme::new(4, false, Granularity::Group(32)).unwrap();
    let q = random_tensor(&mut rng, 45, 96, s);
    let encoded = llmq_gpu::encoding::EncodedTensor::Affine(q.clone());
    let backends: [&dyn Backend; 2] = [&CpuBackend, &gpu];
    for backend in backends {
        let linear = backend.resident_linear(&encoded).unwrap();
        assert_eq!(linear.shape(), [45, 96]);
        for tokens in [1, 3, 70] {
            let x: Vec<f32> = (0..tokens * 96)
                .map(|_| rng.gen_range(-1.0f32..1.0))
                .collect();
            let got = linear.apply(&x, tokens).unwrap();
            let want = backend.matmul(&q, &x, tokens).unwrap();
            assert_eq!(got, want, "{}: {tokens} tokens", backend.name());
        }
        assert!(linear.apply(&[0.0; 95], 1).is_err(), "wrong input length");
    }
}

#[test]
fn gemv_without_subgroups_matches_reference() {
    let ctx = common::gpu();
    let mut rng = common::rng("gemv_without_subgroups_matches_reference");
    for (bits, cols, g) in [(4, 640, 64), (8, 2560, 128), (3, 96, 32)] {
        let s = QuantScheme::new(bits, false, Granularity::Group(g)).unwrap();
        let q = random_tensor(&mut rng, 67, cols, s);
        let tokens = 2;
        let x: Vec<f32> = (0..tokens * cols)
            .map(|_| rng.gen_range(-1.0f32..1.0))
            .collect();
        let want = cpu_matmul::matmul_reference(&q, &x, tokens).unwrap();
        let w = GpuQuantWeights::upload(&ctx, &q).unwrap();
        let xb = ctx.upload("x", bytemuck::cast_slice(&x)).unwrap();
        let yb = ctx.storage("y", (tokens * q.rows * 4) as u64).unwrap();
        let mut enc = ctx.encoder();
        gpu_matmul::encode_matmul_with(&ctx, &mut enc, &w, &xb, &yb, tokens, false).unwrap();
        ctx.submit_and_wait(enc).unwrap();
        let got: Vec<f32> = ctx.read(&yb, tokens * q.rows).unwrap();
        check(
            &format!("no-subgroup gemv W{bits}"),
            &got,
            &want,
            &magnitudes(&q, &x, tokens),
        );
    }
}

#[test]
fn wrong_input_length_is_an_error() {
    let mut rng = common::rng("wrong_input_length_is_an_error");
    let s = QuantScheme::new(4, true, Granularity::Group(32)).unwrap();
    let q = random_tensor(&mut rng, 4, 64, s);
    assert!(cpu_matmul::matmul(&q, &[0.0; 10], 1).is_err());
    assert!(gpu_matmul::matmul(&common::gpu(), &q, &[0.0; 10], 1).is_err());
}

/// CPU-only GEMV/GEMM timing against the copy roofline (no GPU: lavapipe is
/// slow). Run with `cargo test --profile test --test matmul_cross_check
/// cpu_gemv_bench -- --ignored --nocapture`.
#[test]
#[ignore]
fn cpu_gemv_bench() {
    use llmq_gpu::bench::{run_matmul_bench, MatmulBenchOptions};
    let opts = MatmulBenchOptions {
        shapes: vec![(11008, 4096, 1), (4096, 4096, 64)],
        iters: 10,
        ..MatmulBenchOptions::default()
    };
    println!("{}", run_matmul_bench(&opts).unwrap());
}

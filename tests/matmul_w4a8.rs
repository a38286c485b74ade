//! W4A8 (issue 15): 4-bit weight codes with any zero-point times INT8
//! activations (`llmq_gpu::encoding::act8`, `matmul_w4a8` in
//! `shaders/matmul_i8.wgsl`). With unit scales the integer sums are
//! bit-exact against an i64 reference on both backends; with real scales
//! the CPU (batches widened onto the W8 tiles, a few tokens on the packed
//! codes) is bit-exact against the ordered f32 sum written here and the
//! GPU within f32 rounding of it (1e-5 of Σ|w·x|), both equal to the
//! product of the dequantized operands; weights the kernel cannot take are
//! refused.

mod common;

use llmq_gpu::backend::gpu::matmul::GpuQuantWeights;
use llmq_gpu::backend::gpu::matmul_i8::{matmul_i8 as gpu_i8, matmul_i8_resident};
use llmq_gpu::encoding::act8::{
    check_i8_scheme, matmul_i8, matmul_i8_on, quantize_dynamic, quantize_static, CpuInt8Kernel,
    QuantizedActivations,
};
use llmq_gpu::encoding::affine::packing::{pack_codes, unpack_codes};
use llmq_gpu::encoding::{Granularity, QuantScheme, QuantizedTensor};
use rand::Rng;

fn weights(
    rng: &mut impl Rng,
    rows: usize,
    cols: usize,
    g: Granularity,
    symmetric: bool,
    unit: bool,
) -> QuantizedTensor {
    let scheme = QuantScheme::new(4, symmetric, g).unwrap();
    let codes: Vec<u32> = (0..rows * cols).map(|_| rng.gen_range(0..=15)).collect();
    let n = rows * scheme.groups_per_row(cols);
    QuantizedTensor {
        rows,
        cols,
        scheme,
        packed: pack_codes(&codes, rows, cols, 4),
        scales: (0..n)
            .map(|_| match unit {
                true => 1.0,
                false => rng.gen_range(0.001f32..0.05),
            })
            .collect(),
        zeros: (0..n)
            .map(|_| match symmetric {
                true => 8,
                false => rng.gen_range(0..=15),
            })
            .collect(),
    }
}

fn activation_codes(a: &QuantizedActivations) -> Vec<i32> {
    a.packed
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .map(|b| b as i8 as i32)
        .collect()
}

/// `s_t · Σ_g (scale_g · Σ (c − z)·q)`, the integer part in i64, the rest
/// in f32 with groups in order.
fn reference(w: &QuantizedTensor, a: &QuantizedActivations) -> Vec<f32> {
    let c = unpack_codes(&w.packed, w.rows, w.cols, 4);
    let q = activation_codes(a);
    let glen = w.scheme.group_len(w.cols);
    let gpr = w.cols.div_ceil(glen);
    let mut y = vec![0f32; a.tokens * w.rows];
    for t in 0..a.tokens {
        for r in 0..w.rows {
            let mut acc = 0f32;
            for g in 0..gpr {
                let z = w.zeros[r * gpr + g] as i64;
                let dot: i64 = (g * glen..((g + 1) * glen).min(w.cols))
                    .map(|k| (c[r * w.cols + k] as i64 - z) * q[t * w.cols + k] as i64)
                    .sum();
                acc += w.scales[r * gpr + g] * dot as f32;
            }
            y[t * w.rows + r] = a.scales[t] * acc;
        }
    }
    y
}

/// Shapes: GEMV and batches, groups of 8 (no whole AVX2 step), 32, 64 and
/// a shorter last group (200 = 3 groups of 64 and one of 8), per channel.
const SHAPES: [(usize, usize, Granularity, usize); 6] = [
    (37, 256, Granularity::Group(32), 1),
    (65, 200, Granularity::Group(64), 3),
    (19, 512, Granularity::PerChannel, 70),
    (5, 40, Granularity::Group(8), 17),
    (70, 128, Granularity::Group(128), 2),
    (3, 96, Granularity::Group(32), 40),
];

#[test]
fn integer_sums_are_exact_on_both_backends() {
    let ctx = common::gpu();
    let mut rng = common::rng("w4a8_integer_sums_are_exact_on_both_backends");
    for (rows, cols, g, tokens) in SHAPES {
        for symmetric in [true, false] {
            let w = weights(&mut rng, rows, cols, g, symmetric, true);
            let q: Vec<i32> = (0..tokens * cols)
                .map(|_| rng.gen_range(-127..=127))
                .collect();
            let x: Vec<f32> = q.iter().map(|&v| v as f32).collect();
            let a = quantize_static(&x, tokens, cols, 1.0).unwrap();
            let want = reference(&w, &a);
            // |sums| < 2^24: every partial sum is exact in f32.
            assert!(want.iter().all(|v| v.abs() < 16_777_216.0));
            let what = format!("{rows}x{cols} {g:?} sym {symmetric}, {tokens} tokens");
            assert_eq!(matmul_i8(&w, &a).unwrap(), want, "cpu {what}");
            assert_eq!(gpu_i8(&ctx, &w, &a).unwrap(), want, "gpu {what}");
        }
    }
}

#[test]
fn scaled_w4a8_matches_the_dequantized_product() {
    let ctx = common::gpu();
    let mut rng = common::rng("scaled_w4a8_matches_the_dequantized_product");
    for (rows, cols, g, tokens) in SHAPES {
        let w = weights(&mut rng, rows, cols, g, false, false);
        let x: Vec<f32> = (0..tokens * cols)
            .map(|_| common::normal(&mut rng))
            .collect();
        let a = quantize_dynamic(&x, tokens, cols).unwrap();
        let cpu = matmul_i8(&w, &a).unwrap();
        assert_eq!(cpu, reference(&w, &a), "cpu {rows}x{cols}: the ordered sum");
        // Batches widen the codes onto the W8 tiles; the packed-code loop
        // (what a few tokens take) gives the same bits.
        let packed = matmul_i8_on(CpuInt8Kernel::Portable, &w, &a).unwrap();
        assert_eq!(packed, cpu, "cpu {rows}x{cols} {tokens}: both paths");
        let gpu = gpu_i8(&ctx, &w, &a).unwrap();
        let (wd, xd) = (w.dequantize().unwrap(), a.dequantize());
        for t in 0..tokens {
            for r in 0..rows {
                let (wr, xt) = (&wd[r * cols..(r + 1) * cols], &xd[t * cols..(t + 1) * cols]);
                let want: f64 = wr.iter().zip(xt).map(|(&p, &q)| p as f64 * q as f64).sum();
                let mag: f64 = wr
                    .iter()
                    .zip(xt)
                    .map(|(&p, &q)| (p as f64 * q as f64).abs())
                    .sum();
                let (i, tol) = (t * rows + r, 1e-5 * mag + 1e-12);
                assert!(
                    (cpu[i] as f64 - want).abs() <= tol,
                    "cpu {i}: {} vs {want}",
                    cpu[i]
                );
                assert!(
                    (gpu[i] - cpu[i]).abs() as f64 <= tol,
                    "gpu {i}: {} vs {}",
                    gpu[i],
                    cpu[i]
                );
            }
        }
    }
    // Split weights and tokens under a small binding limit give the same.
    let ctx = common::fresh_gpu();
    ctx.set_max_binding(1024);
    let w = weights(&mut rng, 70, 128, Granularity::Group(32), false, false);
    let x: Vec<f32> = (0..9 * 128).map(|_| common::normal(&mut rng)).collect();
    let a = quantize_dynamic(&x, 9, 128).unwrap();
    let gw = GpuQuantWeights::upload(&ctx, &w).unwrap();
    assert!(gw.n_chunks() > 1);
    let got = matmul_i8_resident(&ctx, &gw, &a).unwrap();
    let want = matmul_i8(&w, &a).unwrap();
    for (g, c) in got.iter().zip(&want) {
        assert!((g - c).abs() <= 1e-5 * c.abs().max(1e-3), "{g} vs {c}");
    }
}

#[test]
fn weights_the_kernel_cannot_take_are_refused() {
    let s = |bits, sym, g| QuantScheme::new(bits, sym, g).unwrap();
    assert_eq!(
        check_i8_scheme(&s(4, false, Granularity::Group(32)), 64, 64).unwrap(),
        32
    );
    assert_eq!(
        check_i8_scheme(&s(4, true, Granularity::PerChannel), 64, 64).unwrap(),
        64
    );
    for (scheme, cols) in [
        (s(4, true, Granularity::Group(4)), 64),
        (s(4, true, Granularity::PerChannel), 60),
        (s(3, true, Granularity::Group(32)), 64),
        (s(2, false, Granularity::Group(32)), 64),
        (s(8, false, Granularity::Group(32)), 64),
    ] {
        let e = check_i8_scheme(&scheme, cols, cols)
            .unwrap_err()
            .to_string();
        assert!(e.contains("W4A8") && e.contains(&scheme.label()), "{e}");
    }
    let mut rng = common::rng("w4a8_refused");
    let w = weights(&mut rng, 4, 64, Granularity::Group(32), true, true);
    let a = quantize_dynamic(&vec![1.0; 2 * 32], 2, 32).unwrap();
    let e = matmul_i8(&w, &a).unwrap_err().to_string();
    assert!(e.contains("32 columns for a weight of 64"), "{e}");
}

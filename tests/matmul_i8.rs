//! INT8 × INT8 matmul (`llmq_gpu::encoding::act8`, `shaders/matmul_i8.wgsl`
//! through `dot4I8Packed`): integer accumulation bit-exact against an i64
//! reference written here on both backends; with real scales, the GPU
//! within f32 rounding of the CPU reference and both equal to the product
//! of the dequantized operands; per-token activation quantization within
//! half a step; unsupported weights and bad static scales refused.

mod common;

use llmq_gpu::backend::gpu::matmul::GpuQuantWeights;
use llmq_gpu::backend::gpu::matmul_i8::{matmul_i8 as gpu_i8, matmul_i8_resident};
use llmq_gpu::encoding::act8::{
    matmul_i8, matmul_i8_on, quantize_dynamic, quantize_static, CpuInt8Kernel, QuantizedActivations,
};
use llmq_gpu::encoding::affine::packing::pack_codes;
use llmq_gpu::encoding::{Granularity, QuantScheme, QuantizedTensor};
use rand::Rng;

fn weights(
    rng: &mut impl Rng,
    rows: usize,
    cols: usize,
    g: Granularity,
    unit: bool,
) -> QuantizedTensor {
    let scheme = QuantScheme::new(8, true, g).unwrap();
    let codes: Vec<u32> = (0..rows * cols).map(|_| rng.gen_range(0..=255)).collect();
    let n = rows * scheme.groups_per_row(cols);
    QuantizedTensor {
        rows,
        cols,
        scheme,
        packed: pack_codes(&codes, rows, cols, 8),
        scales: (0..n)
            .map(|_| {
                if unit {
                    1.0
                } else {
                    rng.gen_range(-0.02f32..0.02)
                }
            })
            .collect(),
        zeros: vec![128; n],
    }
}

/// Exact Σ over all groups of (c − 128)·q with unit scales, as i64.
fn integer_reference(w: &QuantizedTensor, codes_x: &[i32], tokens: usize) -> Vec<i64> {
    let c = llmq_gpu::encoding::affine::packing::unpack_codes(&w.packed, w.rows, w.cols, 8);
    let mut y = vec![0i64; tokens * w.rows];
    for t in 0..tokens {
        for r in 0..w.rows {
            y[t * w.rows + r] = (0..w.cols)
                .map(|k| (c[r * w.cols + k] as i64 - 128) * codes_x[t * w.cols + k] as i64)
                .sum();
        }
    }
    y
}

#[test]
fn integer_accumulation_is_exact_on_both_backends() {
    let ctx = common::gpu();
    let mut rng = common::rng("integer_accumulation_is_exact_on_both_backends");
    for (rows, cols, g, tokens) in [
        (37, 256, Granularity::Group(32), 1),
        (65, 100, Granularity::Group(32), 3),
        (19, 512, Granularity::PerChannel, 70),
    ] {
        let w = weights(&mut rng, rows, cols, g, true);
        // Integer activations at scale 1 quantize to themselves.
        let q: Vec<i32> = (0..tokens * cols)
            .map(|_| rng.gen_range(-127..=127))
            .collect();
        let x: Vec<f32> = q.iter().map(|&v| v as f32).collect();
        let a = quantize_static(&x, tokens, cols, 1.0).unwrap();
        assert_eq!(a.dequantize(), x);
        let want: Vec<f32> = integer_reference(&w, &q, tokens)
            .iter()
            .map(|&v| v as f32)
            .collect();
        // |sums| < 2^24: every partial sum is exact in f32.
        assert!(want.iter().all(|v| v.abs() < 16_777_216.0));
        assert_eq!(
            matmul_i8(&w, &a).unwrap(),
            want,
            "cpu {rows}x{cols} {tokens}"
        );
        assert_eq!(
            gpu_i8(&ctx, &w, &a).unwrap(),
            want,
            "gpu {rows}x{cols} {tokens}"
        );
    }
}

#[test]
fn scaled_int8_matmul_matches_the_dequantized_product() {
    let ctx = common::gpu();
    let mut rng = common::rng("scaled_int8_matmul_matches_the_dequantized_product");
    for (rows, cols, g, tokens) in [
        (67, 160, Granularity::Group(32), 1),
        (40, 96, Granularity::Group(64), 4),
        (33, 256, Granularity::PerChannel, 64),
    ] {
        let w = weights(&mut rng, rows, cols, g, false);
        let x: Vec<f32> = (0..tokens * cols)
            .map(|_| common::normal(&mut rng))
            .collect();
        let a = quantize_dynamic(&x, tokens, cols).unwrap();
        let (wd, xd) = (w.dequantize().unwrap(), a.dequantize());
        let cpu = matmul_i8(&w, &a).unwrap();
        let gpu = gpu_i8(&ctx, &w, &a).unwrap();
        for t in 0..tokens {
            for r in 0..rows {
                let (wr, xt) = (&wd[r * cols..(r + 1) * cols], &xd[t * cols..(t + 1) * cols]);
                let want: f64 = wr.iter().zip(xt).map(|(&p, &q)| p as f64 * q as f64).sum();
                let mag: f64 = wr
                    .iter()
                    .zip(xt)
                    .map(|(&p, &q)| (p as f64 * q as f64).abs())
                    .sum();
                let i = t * rows + r;
                let tol = 1e-5 * mag + 1e-12;
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
    let w = weights(&mut rng, 70, 64, Granularity::Group(32), false);
    let x: Vec<f32> = (0..9 * 64).map(|_| common::normal(&mut rng)).collect();
    let a = quantize_dynamic(&x, 9, 64).unwrap();
    let gw = GpuQuantWeights::upload(&ctx, &w).unwrap();
    assert!(gw.n_chunks() > 1);
    let got = matmul_i8_resident(&ctx, &gw, &a).unwrap();
    let want = matmul_i8(&w, &a).unwrap();
    for (g, c) in got.iter().zip(&want) {
        assert!((g - c).abs() <= 1e-5 * c.abs().max(1e-3), "{g} vs {c}");
    }
}

/// `s_t · Σ_g (scale_g · dot_g)`, groups in order, as the portable loop
/// and the WGSL compute it.
fn ordered_reference(w: &QuantizedTensor, a: &QuantizedActivations) -> Vec<f32> {
    let c = llmq_gpu::encoding::affine::packing::unpack_codes(&w.packed, w.rows, w.cols, 8);
    let q: Vec<i32> = a
        .packed
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .map(|b| b as i8 as i32)
        .collect();
    let glen = w.scheme.group_len(w.cols);
    let gpr = w.cols.div_ceil(glen);
    let mut y = vec![0f32; a.tokens * w.rows];
    for t in 0..a.tokens {
        for r in 0..w.rows {
            let mut acc = 0f32;
            for g in 0..gpr {
                let dot: i32 = (g * glen..((g + 1) * glen).min(w.cols))
                    .map(|k| (c[r * w.cols + k] as i32 - 128) * q[t * w.cols + k])
                    .sum();
                acc += w.scales[r * gpr + g] * dot as f32;
            }
            y[t * w.rows + r] = a.scales[t] * acc;
        }
    }
    y
}

#[test]
fn cpu_register_tiles_equal_the_ordered_sum_bit_for_bit() {
    // GEMV tiles (8 rows), batch tiles (2 x 4) with row and token tails,
    // whole-vector groups and groups the tiles do not take (g 4, 100 cols).
    let mut rng = common::rng("cpu_register_tiles_equal_the_ordered_sum_bit_for_bit");
    for (rows, cols, g, tokens) in [
        (13, 128, Granularity::Group(32), 1),
        (9, 192, Granularity::Group(64), 3),
        (7, 96, Granularity::PerChannel, 37),
        (64, 256, Granularity::Group(128), 70),
        (5, 100, Granularity::Group(4), 33),
        (1, 32, Granularity::Group(32), 40),
        // A shorter last group of whole vectors (576 = 4.5 groups of 128).
        (11, 576, Granularity::Group(128), 130),
        (6, 576, Granularity::Group(128), 2),
    ] {
        let w = weights(&mut rng, rows, cols, g, false);
        let x: Vec<f32> = (0..tokens * cols)
            .map(|_| 3.0 * common::normal(&mut rng))
            .collect();
        let a = quantize_dynamic(&x, tokens, cols).unwrap();
        let want = ordered_reference(&w, &a);
        for kernel in [
            CpuInt8Kernel::Best,
            CpuInt8Kernel::Avx2,
            CpuInt8Kernel::Portable,
        ] {
            let got = matmul_i8_on(kernel, &w, &a).unwrap();
            let same = got
                .iter()
                .zip(&want)
                .all(|(p, q)| p.to_bits() == q.to_bits());
            assert!(same, "{kernel:?} {rows}x{cols} {g:?} {tokens} tokens");
        }
    }
}

#[test]
fn dynamic_quantization_is_within_half_a_step() {
    let mut rng = common::rng("dynamic_quantization_is_within_half_a_step");
    let (tokens, cols) = (5, 64);
    let x: Vec<f32> = (0..tokens * cols)
        .map(|i| common::normal(&mut rng) * (1 + i / cols) as f32)
        .collect();
    let a: QuantizedActivations = quantize_dynamic(&x, tokens, cols).unwrap();
    let back = a.dequantize();
    for t in 0..tokens {
        let m = x[t * cols..(t + 1) * cols]
            .iter()
            .fold(0f32, |m, v| m.max(v.abs()));
        assert_eq!(a.scales[t], m / 127.0);
        for k in 0..cols {
            let i = t * cols + k;
            assert!(
                (back[i] - x[i]).abs() <= a.scales[t] * 0.5 * (1.0 + 1e-5),
                "{i}"
            );
        }
    }
}

#[test]
fn unsupported_int8_requests_are_refused() {
    let mut rng = common::rng("unsupported_int8_requests_are_refused");
    let x = vec![0.5f32; 2 * 64];
    for s in [0.0, -1.0, f32::NAN] {
        let e = quantize_static(&x, 2, 64, s).unwrap_err();
        assert!(e.to_string().contains("positive and finite"), "{e}");
    }
    assert!(quantize_dynamic(&x[..63], 1, 63).is_err());
    let a = quantize_dynamic(&x, 2, 64).unwrap();
    let mut w = weights(&mut rng, 4, 64, Granularity::Group(32), false);
    w.scheme = QuantScheme::new(3, true, Granularity::Group(32)).unwrap();
    assert!(matmul_i8(&w, &a)
        .unwrap_err()
        .to_string()
        .contains("8-bit symmetric"));
}

/// `eval --int8-activations` runs a W8 symmetric model and a W4 one
/// (W4A8) with their block linears' inputs really quantized (close to, not
/// equal to, f32 inputs) and refuses weights the integer matmul cannot
/// take (W3), naming the tensor.
#[test]
fn eval_runs_int8_activations_on_w8_and_w4_models_only() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::tiny(dir.path(), true);
    let text = common::text(dir.path(), 400);
    let quantize = |out: &str, extra: &[&str]| {
        let mut args = vec![
            "quantize",
            "--model",
            model.to_str().unwrap(),
            "--out",
            out,
            "--method",
            "rtn",
        ];
        args.extend_from_slice(extra);
        let o = common::llmq(&args);
        assert!(o.status.success(), "{}", common::stderr(&o));
    };
    let (w8, w4, w3) = (
        dir.path().join("w8"),
        dir.path().join("w4"),
        dir.path().join("w3"),
    );
    quantize(
        w8.to_str().unwrap(),
        &["--bits", "8", "--sym", "--group-size", "32"],
    );
    quantize(w4.to_str().unwrap(), &["--bits", "4", "--group-size", "32"]);
    quantize(w3.to_str().unwrap(), &["--bits", "3", "--group-size", "32"]);
    let eval = |m: &std::path::Path, int8: bool| {
        let mut args = vec![
            "eval",
            "--model",
            m.to_str().unwrap(),
            "--text",
            text.to_str().unwrap(),
            "--ctx",
            "32",
            "--device",
            "cpu",
            "--json",
        ];
        if int8 {
            args.push("--int8-activations");
        }
        common::llmq(&args)
    };
    let ppl = |o: std::process::Output| -> f64 {
        assert!(o.status.success(), "{}", common::stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["ppl"]
            .as_f64()
            .or_else(|| v["models"][0]["ppl"].as_f64())
            .unwrap()
    };
    let (f, i) = (ppl(eval(&w8, false)), ppl(eval(&w8, true)));
    eprintln!("W8 perplexity: f32 activations {f:.6}, INT8 {i:.6}");
    assert!(f != i && (f - i).abs() < 0.05 * f, "{f} vs {i}");
    let (f4, i4) = (ppl(eval(&w4, false)), ppl(eval(&w4, true)));
    eprintln!("W4 perplexity: f32 activations {f4:.6}, INT8 {i4:.6}");
    assert!(f4 != i4 && (f4 - i4).abs() < 0.05 * f4, "{f4} vs {i4}");
    // Static per-tensor scales calibrated on another text, each calibrator.
    let calib = common::text(dir.path(), 300);
    for c in ["minmax", "percentile", "mse", "kl"] {
        let o = common::llmq(&[
            "eval",
            "--model",
            w8.to_str().unwrap(),
            "--text",
            text.to_str().unwrap(),
            "--ctx",
            "32",
            "--device",
            "cpu",
            "--json",
            "--int8-activations",
            "--act-calib",
            c,
            "--act-calib-text",
            calib.to_str().unwrap(),
            "--act-calib-windows",
            "4",
        ]);
        let s = ppl(o);
        assert!(s.is_finite() && (s - f).abs() < 0.5 * f, "{c}: {s} vs {f}");
    }
    let o = common::llmq(&[
        "eval",
        "--model",
        w8.to_str().unwrap(),
        "--text",
        text.to_str().unwrap(),
        "--device",
        "cpu",
        "--int8-activations",
        "--act-calib",
        "percentile",
        "--percentile",
        "0",
        "--act-calib-text",
        calib.to_str().unwrap(),
    ]);
    assert!(!o.status.success() && common::stderr(&o).contains("(0, 100]"));
    let o = eval(&w3, true);
    let e = common::stderr(&o);
    assert!(
        !o.status.success() && e.contains("--bits 8 --sym") && e.contains("q_proj"),
        "{e}"
    );
}

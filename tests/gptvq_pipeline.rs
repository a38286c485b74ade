//! GPTVQ over whole models (issue 13): the sequential pipeline writes VQ
//! weights that load packed, run packed on both backends' forward passes
//! (against the dequantized weights), and report their errors against RTN
//! and GPTQ; the GPU pipeline agrees with the CPU's; bad settings fail
//! before anything is written.
//!
//! Bounds: the packed forward against the same weights dense, 1e-4 of the
//! largest logit (f32 sums in another order); GPU forward against CPU
//! forward, 1e-3 (as tests/forward_gpu.rs); GPU pipeline against CPU
//! pipeline, every linear's output error within 10% (as
//! tests/gptq_pipeline.rs, for the same reasons: ULP differences flip a
//! near-tie and error feedback carries it).

mod common;

use common::gptq_model::{tiny_model, LAYERS};
use llmq_gpu::backend::{Backend, CpuBackend, GpuBackend};
use llmq_gpu::encoding::{EncodedTensor, VqScheme};
use llmq_gpu::model::forward::{open_forward, CpuForward, Linear};
use llmq_gpu::pipeline::calib::CalibConfig;
use llmq_gpu::pipeline::gptq::GptqSettings;
use llmq_gpu::quant::gptvq::GptvqOptions;
use llmq_gpu::{
    quantize_model_with, CancelToken, DeviceChoice, Granularity, ModelView, QuantScheme,
    QuantizeConfig, QuantizeReport,
};
use std::path::Path;

fn run(
    backend: &dyn Backend,
    model: &Path,
    out: &Path,
    vq: VqScheme,
) -> llmq_gpu::Result<QuantizeReport> {
    run_with(backend, model, out, GptvqOptions::new(vq))
}

fn run_with(
    backend: &dyn Backend,
    model: &Path,
    out: &Path,
    options: GptvqOptions,
) -> llmq_gpu::Result<QuantizeReport> {
    let vq = options.scheme;
    let settings = GptqSettings::new(CalibConfig {
        samples: 8,
        len: 32,
        seed: 3,
        ..CalibConfig::new(model.parent().unwrap().join("calib.txt"))
    });
    let baseline = QuantScheme::new(vq.bits, false, Granularity::Group(32)).unwrap();
    let config = QuantizeConfig::new(model, out, baseline)
        .gptvq(settings, options)
        .overwrite(true);
    quantize_model_with(backend, &config, &mut |_| {}, &CancelToken::default())
}

fn max_diff(a: &[f32], b: &[f32]) -> (f32, f32) {
    let max = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    (d, max)
}

#[test]
fn gptvq_models_run_packed_and_the_gpu_pipeline_matches() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = common::rng("gptvq_models_run_packed_and_the_gpu_pipeline_matches");
    let model = tiny_model(dir.path(), &mut rng, &|_, _| {});
    let gpu = GpuBackend::new(common::gpu());
    let vq = VqScheme::new(2, 2, 512, 8).unwrap();
    let out = dir.path().join("vq");
    let report = run(&CpuBackend, &model, &out, vq).unwrap();
    assert_eq!(report.quantized_tensors, 7 * LAYERS);
    assert!(report.scheme.starts_with("VQ 2D"), "{}", report.scheme);
    let g = report.gptq.as_ref().unwrap();
    for l in g.layers.iter().flat_map(|l| &l.linears) {
        assert!(
            l.gptq_error < l.rtn_error,
            "{}: GPTVQ {} vs RTN {}",
            l.name,
            l.gptq_error,
            l.rtn_error
        );
        assert!(l.gptq_baseline_error.is_some(), "{}", l.name);
    }
    // Exact bits: the file's linears are what the encoding counts.
    let view = ModelView::open(&out).unwrap();
    let mut stored = 0u64;
    for t in view.tensors() {
        if let Some(EncodedTensor::Vq(v)) = view.load_encoded(&t.name).unwrap() {
            assert_eq!(v.scheme, vq);
            stored += v.stored_bytes();
        }
    }
    assert_eq!(stored, report.linears.stored_bytes);

    // Packed forward against the dequantized weights, and GPU against CPU.
    let tokens: Vec<u32> = vec![1, 5, 9, 30, 2, 17, 17, 4, 0, 31, 12, 40, 41];
    let packed = CpuForward::load(&view).unwrap();
    assert!(packed
        .weights
        .layers
        .iter()
        .flat_map(|l| l.linears())
        .all(Linear::is_packed));
    let mut dense_w = packed.weights.clone();
    for layer in &mut dense_w.layers {
        use llmq_gpu::model::TensorKind::*;
        for kind in [AttnQ, AttnK, AttnV, AttnOutput, MlpGate, MlpUp, MlpDown] {
            let l = layer.linear_mut(kind).unwrap();
            if let Linear::Packed(q) = l {
                *l = Linear::dense(q.rows(), q.cols(), q.dequantize().unwrap()).unwrap();
            }
        }
    }
    let a = packed.logits(&tokens).unwrap();
    let (d, max) = max_diff(&a, &CpuForward::new(dense_w).logits(&tokens).unwrap());
    assert!(d <= 1e-4 * max, "packed vs dense: {d} of {max}");
    let on_gpu = open_forward(&out, DeviceChoice::Vulkan, None).unwrap();
    let (d, max) = max_diff(&on_gpu.logits(&tokens).unwrap(), &a);
    assert!(d <= 1e-3 * max, "GPU vs CPU forward: {d} of {max}");

    // The pipeline on the GPU backend.
    let rg = run(&gpu, &model, &dir.path().join("vq-gpu"), vq).unwrap();
    let gg = rg.gptq.as_ref().unwrap();
    for (c, g) in g
        .layers
        .iter()
        .flat_map(|l| &l.linears)
        .zip(gg.layers.iter().flat_map(|l| &l.linears))
    {
        let rel = (g.gptq_error - c.gptq_error).abs() / c.gptq_error;
        assert!(
            rel <= 0.1,
            "{}: GPU {} vs CPU {}",
            c.name,
            g.gptq_error,
            c.gptq_error
        );
    }
}

#[test]
fn bad_vq_settings_fail_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = common::rng("bad_vq_settings_fail_before_anything_is_written");
    let model = tiny_model(dir.path(), &mut rng, &|_, _| {});
    let out = dir.path().join("vq");
    // 4D codebooks of 256 centroids over 8 rows: on the 64-column inputs a
    // codebook covers 8 x 64 weights, 128 vectors, too few.
    let vq = VqScheme::new(4, 2, 2048, 8).unwrap();
    let e = run(&CpuBackend, &model, &out, vq).unwrap_err().to_string();
    assert!(e.contains("proj.weight") && e.contains("vectors"), "{e}");
    assert!(!out.exists());
    // 64 rows per codebook divide neither the 160-row gate/up nor the
    // 32-row k/v projections: their last row groups are shorter (ragged,
    // like the last span of a row), and the model quantizes and loads.
    let ragged = GptvqOptions {
        codebook_update: false,
        ..GptvqOptions::new(VqScheme::new(2, 2, 256 * 64, 8).unwrap())
    };
    let r = run_with(&CpuBackend, &model, &out, ragged).unwrap();
    assert!(r.bits_per_weight > 2.0);
    let tokens: Vec<u32> = vec![1, 5, 9, 30, 2, 17];
    let cpu = CpuForward::load(&ModelView::open(&out).unwrap()).unwrap();
    let gpu = open_forward(&out, DeviceChoice::Vulkan, None).unwrap();
    let a = cpu.logits(&tokens).unwrap();
    let (d, max) = max_diff(&gpu.logits(&tokens).unwrap(), &a);
    assert!(
        d <= 1e-3 * max,
        "ragged rows, GPU vs CPU forward: {d} of {max}"
    );
    std::fs::remove_dir_all(&out).unwrap();
    // Row scales and SVD codebooks survive the file: the schemes read back
    // are the ones written, the stored bytes the report's, and the packed
    // forward equals the dequantized weights' (1e-4).
    for scheme in [
        VqScheme::new(2, 2, 512, 8)
            .unwrap()
            .with_scale_block(32)
            .unwrap(),
        VqScheme::new(1, 3, 256, 8)
            .unwrap()
            .with_svd_rank(4)
            .unwrap(),
    ] {
        let o = GptvqOptions {
            codebook_update: true,
            ..GptvqOptions::new(scheme)
        };
        let r = run_with(&CpuBackend, &model, &out, o).unwrap();
        let view = ModelView::open(&out).unwrap();
        let mut stored = 0u64;
        for t in view.tensors() {
            if let Some(EncodedTensor::Vq(v)) = view.load_encoded(&t.name).unwrap() {
                assert_eq!(v.scheme, scheme, "{}", t.name);
                stored += v.stored_bytes();
            }
        }
        assert_eq!(stored, r.linears.stored_bytes, "{scheme:?}");
        let packed = CpuForward::load(&view).unwrap();
        let mut dense_w = packed.weights.clone();
        for layer in &mut dense_w.layers {
            use llmq_gpu::model::TensorKind::*;
            for kind in [AttnQ, AttnK, AttnV, AttnOutput, MlpGate, MlpUp, MlpDown] {
                let l = layer.linear_mut(kind).unwrap();
                if let Linear::Packed(q) = l {
                    *l = Linear::dense(q.rows(), q.cols(), q.dequantize().unwrap()).unwrap();
                }
            }
        }
        let tokens: Vec<u32> = vec![1, 5, 9, 30, 2, 17];
        let a = packed.logits(&tokens).unwrap();
        let (d, max) = max_diff(&a, &CpuForward::new(dense_w).logits(&tokens).unwrap());
        assert!(d <= 1e-4 * max, "{scheme:?} packed vs dense: {d} of {max}");
        std::fs::remove_dir_all(&out).unwrap();
    }
    // NaN weights name the tensor.
    let poisoned = tiny_model(&dir.path().join("nan"), &mut rng, &|name, v| {
        if name.contains("layers.1.mlp.up_proj") {
            v[3] = f32::NAN;
        }
    });
    let vq = VqScheme::new(2, 2, 512, 8).unwrap();
    let e = run(&CpuBackend, &poisoned, &out, vq)
        .unwrap_err()
        .to_string();
    assert!(e.contains("up_proj"), "{e}");
    assert!(!out.exists());
}

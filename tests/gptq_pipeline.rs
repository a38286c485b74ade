//! Sequential GPTQ over whole models (issue 4): the layer-by-layer pipeline
//! on both backends, against RTN on SmolLM2, degenerate calibration data,
//! non-finite activations, cancellation and the CLI.
//!
//! Bound, GPU vs CPU pipeline on the same model and text: the GPU factors
//! H⁻¹ in f32 (the CPU in f64) and its kernels round differently in the
//! last bits, so a code can flip at a tie; GPTQ's error feedback then takes
//! a different (equally good) path along that row, and changed codes shift
//! the next layer's inputs. Layer 0 agrees to about 1e-6; over two layers
//! no code differed in 19 of 20 runs made, 2.6% in one (some by more than 1,
//! with a 2.7% difference in one linear's error). The test allows 10% of
//! codes and 10% relative difference in every linear's GPTQ output error,
//! and both backends must beat RTN on every linear.

mod common;

use llmq_gpu::backend::{Backend, CpuBackend, GpuBackend};
use llmq_gpu::encoding::affine::packing::unpack_codes;
use llmq_gpu::model::forward::ops::AttnShape;
use llmq_gpu::pipeline::calib::CalibConfig;
use llmq_gpu::pipeline::gptq::{GptqRunReport, GptqSettings};
use llmq_gpu::{
    quantize_model_with, CancelToken, Error, Granularity, ModelView, QuantScheme, QuantizeConfig,
    QuantizeReport,
};
use rand::Rng;
use std::path::{Path, PathBuf};

use common::gptq_model::{tiny_model, LAYERS};

fn settings(dir: &Path, samples: usize, len: usize) -> GptqSettings {
    GptqSettings::new(CalibConfig {
        samples,
        len,
        seed: 3,
        ..CalibConfig::new(dir.join("calib.txt"))
    })
}

fn run(
    backend: &dyn Backend,
    model: &Path,
    out: &Path,
    scheme: QuantScheme,
    settings: GptqSettings,
) -> llmq_gpu::Result<QuantizeReport> {
    let config = QuantizeConfig::new(model, out, scheme)
        .gptq(settings)
        .overwrite(true);
    quantize_model_with(backend, &config, &mut |_| {}, &CancelToken::default())
}

fn gptq_report(r: &QuantizeReport) -> &GptqRunReport {
    r.gptq.as_ref().expect("GPTQ runs carry a GPTQ report")
}

#[test]
fn pipeline_gpu_matches_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = common::rng("pipeline_gpu_matches_cpu");
    let model = tiny_model(dir.path(), &mut rng, &|_, _| {});
    let gpu = GpuBackend::new(common::gpu());
    let scheme = QuantScheme::new(4, false, Granularity::Group(32)).unwrap();
    let (out_c, out_g) = (dir.path().join("cpu"), dir.path().join("gpu"));
    let rc = run(
        &CpuBackend,
        &model,
        &out_c,
        scheme,
        settings(dir.path(), 8, 32),
    )
    .unwrap();
    let rg = run(&gpu, &model, &out_g, scheme, settings(dir.path(), 8, 32)).unwrap();
    assert_eq!(rc.quantized_tensors, 7 * LAYERS);
    let (vc, vg) = (
        ModelView::open(&out_c).unwrap(),
        ModelView::open(&out_g).unwrap(),
    );
    let (mut differ, mut far, mut total) = (0usize, 0usize, 0usize);
    for t in vc.tensors() {
        let Some(qc) = vc.load_quantized(&t.name).unwrap() else {
            continue;
        };
        let qg = vg
            .load_quantized(&t.name)
            .unwrap()
            .expect("quantized on GPU too");
        let (a, b) = (
            unpack_codes(&qc.packed, qc.rows, qc.cols, 4),
            unpack_codes(&qg.packed, qg.rows, qg.cols, 4),
        );
        differ += a.iter().zip(&b).filter(|(x, y)| x != y).count();
        far += a
            .iter()
            .zip(&b)
            .filter(|(x, y)| x.abs_diff(**y) > 1)
            .count();
        total += a.len();
    }
    let (gc, gg) = (gptq_report(&rc), gptq_report(&rg));
    for (lc, lg) in gc
        .layers
        .iter()
        .flat_map(|l| &l.linears)
        .zip(gg.layers.iter().flat_map(|l| &l.linears))
    {
        assert_eq!(lc.name, lg.name);
        let rel = (lc.gptq_error - lg.gptq_error).abs() / lc.gptq_error;
        eprintln!(
            "{}: GPTQ error CPU {:.4e} GPU {:.4e} (rel diff {rel:.2e}); RTN {:.4e}",
            lc.name, lc.gptq_error, lg.gptq_error, lc.rtn_error
        );
        assert!(rel <= 0.10, "{}: GPU/CPU errors differ by {rel}", lc.name);
        assert!(lc.gptq_error < lc.rtn_error && lg.gptq_error < lg.rtn_error);
    }
    let share = differ as f64 / total as f64;
    eprintln!(
        "GPU vs CPU pipeline: {differ} of {total} codes differ ({share:.4}), {far} by more than 1"
    );
    assert!(share <= 0.10, "{share} of codes differ (bound 0.10)");
    assert!(
        gg.peak_gpu_bytes.is_some_and(|b| b > 0),
        "GPU peak memory reported"
    );
    assert!(
        gc.peak_gpu_bytes.is_none(),
        "the CPU backend has no GPU memory"
    );
    let json = std::fs::read_to_string(out_g.join("gptq-report.json")).unwrap();
    assert!(json.contains("\"rtn_error\""), "{json}");
}

/// Every linear of SmolLM2, sequentially on a few Emma windows: GPTQ's
/// output error on its calibration inputs is below RTN's at W3 g128, and
/// the output runs. (W4 g128 is checked on layer 0 by `gptq_smollm2.rs`;
/// a second whole-model run here cost CI two minutes.)
#[test]
fn pipeline_beats_rtn_on_every_smollm2_linear() {
    let dir = tempfile::tempdir().unwrap();
    let emma = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cache/austen/emma.txt");
    assert!(
        emma.exists(),
        "{}: run scripts/fetch-fixtures.sh",
        emma.display()
    );
    let bits = 3;
    let scheme = QuantScheme::new(bits, false, Granularity::Group(128)).unwrap();
    let out = dir.path().join(format!("w{bits}"));
    let mut s = GptqSettings::new(CalibConfig {
        samples: 4,
        len: 64,
        seed: 0,
        ..CalibConfig::new(emma.clone())
    });
    s.options.damp = 0.01;
    let r = run(&CpuBackend, &common::smollm2_gguf(), &out, scheme, s).unwrap();
    let g = gptq_report(&r);
    let linears: Vec<_> = g.layers.iter().flat_map(|l| &l.linears).collect();
    assert_eq!(linears.len(), 30 * 7);
    let worst = linears
        .iter()
        .map(|l| l.gptq_error / l.rtn_error)
        .fold(0.0, f64::max);
    eprintln!(
        "W{bits} g128: worst GPTQ/RTN output-error ratio over 210 linears {worst:.3}; \
         peak host {:?} bytes; {:.1} s",
        g.peak_host_bytes, g.seconds
    );
    assert!(
        g.linears_not_better_than_rtn.is_empty(),
        "GPTQ not below RTN on {:?}",
        g.linears_not_better_than_rtn
    );
    // The output loads and runs.
    let forward =
        llmq_gpu::model::forward::open_forward(&out, llmq_gpu::DeviceChoice::Cpu, None).unwrap();
    let logits = forward.logits(&[1, 2, 3]).unwrap();
    assert!(logits.iter().all(|x| x.is_finite()));
}

/// One window of 8 tokens (far fewer than the 64 and 160 inputs) and an
/// input feature that is always zero: the Hessians are singular, GPTQ still
/// completes (damping, dead inputs) and reports what it did.
#[test]
fn pipeline_survives_degenerate_calibration() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = common::rng("pipeline_survives_degenerate_calibration");
    // A zero in layer 0's input norm zeroes that feature of the q/k/v input.
    let model = tiny_model(dir.path(), &mut rng, &|name, v| {
        if name == "model.layers.0.input_layernorm.weight" {
            v[5] = 0.0;
        }
    });
    let scheme = QuantScheme::new(3, true, Granularity::Group(32)).unwrap();
    let r = run(
        &CpuBackend,
        &model,
        &dir.path().join("out"),
        scheme,
        settings(dir.path(), 1, 8),
    )
    .unwrap();
    let g = gptq_report(&r);
    let q = &g.layers[0].linears[0];
    assert_eq!(q.name, "model.layers.0.self_attn.q_proj.weight");
    assert_eq!(q.dead_columns, 1, "{q:?}");
    for l in g.layers.iter().flat_map(|l| &l.linears) {
        assert!(l.gptq_error.is_finite() && l.damp_used >= 0.01, "{l:?}");
    }
}

/// A NaN in a linear of layer 1 stops the run with an error naming the
/// tensor, after layer 0 was already written: no output is left behind.
/// (Non-finite activations are caught where each Hessian accumulates, with
/// the layer and site as the name: `tests/gptq.rs` checks that message.)
#[test]
fn pipeline_names_the_tensor_with_nan_weights() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = common::rng("pipeline_names_the_tensor_with_nan_weights");
    let model = tiny_model(dir.path(), &mut rng, &|name, v| {
        if name == "model.layers.1.mlp.gate_proj.weight" {
            v[3] = f32::NAN;
        }
    });
    let out = dir.path().join("out");
    let scheme = QuantScheme::new(4, false, Granularity::Group(32)).unwrap();
    let e = run(
        &CpuBackend,
        &model,
        &out,
        scheme,
        settings(dir.path(), 2, 16),
    )
    .unwrap_err();
    let msg = e.to_string();
    eprintln!("{msg}");
    assert!(matches!(e, Error::BadTensor { .. }), "{e:?}");
    assert!(msg.contains("model.layers.1.mlp.gate_proj.weight"), "{msg}");
    assert!(!out.exists(), "a failed run leaves no output");
}

#[test]
fn pipeline_cancel_leaves_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = common::rng("pipeline_cancel_leaves_no_output");
    let model = tiny_model(dir.path(), &mut rng, &|_, _| {});
    let out = dir.path().join("out");
    let scheme = QuantScheme::new(4, false, Granularity::Group(32)).unwrap();
    let config = QuantizeConfig::new(&model, &out, scheme).gptq(settings(dir.path(), 2, 16));
    let cancel = CancelToken::default();
    let token = cancel.clone();
    let e = quantize_model_with(
        &CpuBackend,
        &config,
        &mut |p| {
            if matches!(p, llmq_gpu::Progress::Layer { index: 0, .. }) {
                token.cancel();
            }
        },
        &cancel,
    )
    .unwrap_err();
    assert!(matches!(e, Error::Cancelled), "{e:?}");
    assert!(!out.exists());
}

#[test]
fn cli_gptq_writes_report_and_needs_calibration() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = common::rng("cli_gptq_writes_report_and_needs_calibration");
    let model = tiny_model(dir.path(), &mut rng, &|_, _| {});
    let out = dir.path().join("out");
    let bin = env!("CARGO_BIN_EXE_llmq-gpu");
    let base = |extra: &[&str]| {
        let mut c = std::process::Command::new(bin);
        c.args([
            "quantize",
            "--device",
            "cpu",
            "--method",
            "gptq",
            "--group-size",
            "32",
        ])
        .arg("--model")
        .arg(&model)
        .arg("--out")
        .arg(&out)
        .args(extra);
        c.output().unwrap()
    };
    let no_calib = base(&[]);
    assert!(!no_calib.status.success());
    let err = String::from_utf8_lossy(&no_calib.stderr);
    assert!(err.contains("--calib FILE"), "{err}");
    let calib = dir.path().join("calib.txt");
    // A run on the calibration text with `extra` flags: its stdout and report.
    let calibrated = |extra: &[&str]| {
        let mut args = vec![
            "--calib",
            calib.to_str().unwrap(),
            "--calib-samples",
            "4",
            "--calib-len",
            "16",
        ];
        args.extend_from_slice(extra);
        let run = base(&args);
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("gptq-report.json")).unwrap()).unwrap();
        (String::from_utf8_lossy(&run.stdout).into_owned(), report)
    };
    let (stdout, report) = calibrated(&[]);
    assert!(
        stdout.contains("GPTQ is below RTN") || stdout.contains("not below RTN"),
        "{stdout}"
    );
    assert_eq!(report["act_order"], true);
    assert_eq!(report["layers"].as_array().unwrap().len(), LAYERS);
    // Act-order is the default; --no-act-order is plain GPTQ.
    let (_, report) = calibrated(&["--no-act-order", "--overwrite"]);
    assert_eq!(report["act_order"], false);
}

/// The calibration forward's attention over independent windows: GPU
/// (windows split under a small binding limit: 3 per dispatch) against the
/// CPU, grouped-query heads, within 1e-5 of the largest output.
#[test]
fn causal_attention_gpu_matches_cpu() {
    let mut rng = common::rng("causal_attention_gpu_matches_cpu");
    let shape = AttnShape {
        heads: 4,
        kv_heads: 2,
        head_dim: 16,
    };
    let (windows, seq) = (7, 19);
    let ctx = common::fresh_gpu();
    ctx.set_max_binding((3 * seq * 64 * 4) as u64);
    let gpu = GpuBackend::new(std::sync::Arc::new(ctx));
    let mut random =
        |n: usize| -> Vec<f32> { (0..n).map(|_| rng.gen::<f32>() * 4.0 - 2.0).collect() };
    let q = random(windows * seq * 64);
    let k = random(windows * seq * 32);
    let v = random(windows * seq * 32);
    let want = CpuBackend
        .causal_attention(&q, &k, &v, windows, seq, shape)
        .unwrap();
    let got = gpu
        .causal_attention(&q, &k, &v, windows, seq, shape)
        .unwrap();
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
    let diff = want
        .iter()
        .zip(&got)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    eprintln!("attention: max |GPU - CPU| {diff:.2e} of max |out| {scale:.2}");
    assert!(diff <= 1e-5 * scale, "GPU attention differs by {diff}");
    // A shape mismatch is an error, not a panic.
    let err = gpu
        .causal_attention(&q[1..], &k, &v, windows, seq, shape)
        .unwrap_err();
    assert!(err.to_string().contains("attention"), "{err}");
}

/// MLP activations recomputed (no activation budget) or kept: the same
/// computations in the same order, so the same codes and errors (up to the
/// order of the report's parallel f64 sums).
#[test]
fn recomputed_mlp_activations_match_kept_ones() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = common::rng("recomputed_mlp_activations_match_kept_ones");
    let model = tiny_model(dir.path(), &mut rng, &|_, _| {});
    let scheme = QuantScheme::new(3, false, Granularity::Group(32)).unwrap();
    let (kept, recomputed) = (dir.path().join("kept"), dir.path().join("recomputed"));
    let mut small = settings(dir.path(), 6, 24);
    small.chunk_budget = 1; // one window per chunk
    let rk = run(&CpuBackend, &model, &kept, scheme, small.clone()).unwrap();
    small.activation_budget = 0;
    let rr = run(&CpuBackend, &model, &recomputed, scheme, small).unwrap();
    assert!(gptq_report(&rk).stored_mlp_activations);
    assert!(!gptq_report(&rr).stored_mlp_activations);
    assert_eq!(gptq_report(&rr).chunk_windows, 1);
    let (vk, vr) = (
        ModelView::open(&kept).unwrap(),
        ModelView::open(&recomputed).unwrap(),
    );
    for t in vk.tensors() {
        if let Some(a) = vk.load_quantized(&t.name).unwrap() {
            let b = vr.load_quantized(&t.name).unwrap().unwrap();
            assert_eq!(a.packed, b.packed, "{}", t.name);
        }
    }
    let errors = |r: &QuantizeReport| -> Vec<f64> {
        gptq_report(r)
            .layers
            .iter()
            .flat_map(|l| l.linears.iter().map(|x| x.gptq_error))
            .collect()
    };
    for (a, b) in errors(&rk).iter().zip(errors(&rr)) {
        assert!((a - b).abs() <= 1e-12 * a, "errors {a} and {b}");
    }
}

/// The synthetic-layer benchmark (what a real GPU's 7B figure comes from)
/// runs every phase, the forward with its norms and attention, and refuses
/// chunks that are not whole windows.
#[test]
fn synthetic_bench_times_every_phase() {
    use llmq_gpu::bench::forward::PeakRates;
    use llmq_gpu::bench::gptq::{bench_synthetic, SyntheticLayer};
    let peak = PeakRates {
        matmul_gflops: 10.0,
        copy_gbps: 10.0,
        detail: "fixed for the test".into(),
    };
    let shape = SyntheticLayer {
        hidden: 128,
        kv: 64,
        ffn: 192,
        tokens: 256,
        chunk: 128,
        seq: 64,
        head_dim: 32,
    };
    let scheme = QuantScheme::new(4, false, Granularity::Group(32)).unwrap();
    let opts = llmq_gpu::quant::gptq::GptqOptions::default();
    let r = bench_synthetic(&CpuBackend, peak.clone(), shape, 2, &scheme, &opts, 32).unwrap();
    assert_eq!(r.layers, 2);
    // Per layer (2 layers): matmuls 2·tokens·rows·cols per linear; the rest
    // of the forward: four norms, SwiGLU and attention over 4 windows of 64.
    let linears = [
        (128, 128),
        (64, 128),
        (64, 128),
        (128, 128),
        (192, 128),
        (192, 128),
        (128, 192),
    ];
    let matmul: usize = linears.iter().map(|(r, c)| 2 * 256 * r * c).sum();
    let host = 16 * 256 * 128 + 6 * 256 * 192 + 4 * 4 * 4 * 64 * 64 * 32;
    let forward = &r.phases[0];
    assert_eq!(forward.phase, "calibration forward");
    assert!(
        (forward.gflop * 1e9 - (2 * (matmul + host)) as f64).abs() < 1.0,
        "forward GFLOP {}",
        forward.gflop
    );
    for p in &r.phases {
        assert!(p.seconds > 0.0 && p.gflop > 0.0, "{p:?}");
    }
    let (n, minutes) = r.extrapolated.unwrap();
    assert_eq!(n, 32);
    assert!((minutes - r.layer_seconds[0] * 32.0 / 60.0).abs() < 1e-9);
    let ragged = SyntheticLayer {
        chunk: 100,
        ..shape
    };
    assert!(bench_synthetic(&CpuBackend, peak, ragged, 1, &scheme, &opts, 32).is_err());
}

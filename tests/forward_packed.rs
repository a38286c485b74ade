//! Quantized models run packed: an llmq folder written by `quantize` loads
//! with its linears still packed (`Linear::Packed`), runs through the CPU
//! dequant-matmul, and gives the logits of the same model with the weights
//! dequantized to dense f32 (tolerance: 1e-4 of max |logit|, f32 rounding
//! of two summation orders).

mod common;

use llmq_gpu::model::forward::{open_forward, CpuForward, Linear, LlamaWeights};
use llmq_gpu::model::TensorKind;
use llmq_gpu::{CancelToken, DeviceChoice, Granularity, ModelView, QuantScheme, QuantizeConfig};

fn quantized_tiny(dir: &std::path::Path, scheme: QuantScheme) -> std::path::PathBuf {
    let model = common::tiny_llama(dir, None);
    let out = dir.join("q");
    let cfg = QuantizeConfig::new(model, &out, scheme).device(DeviceChoice::Cpu);
    llmq_gpu::quantize_model(&cfg, &mut |_| {}, &CancelToken::default()).expect("quantize");
    out
}

fn dense_copy(w: &LlamaWeights) -> LlamaWeights {
    let mut d = w.clone();
    let densify = |l: &mut Linear| {
        if let Linear::Packed(q) = l {
            let (r, c) = (q.rows(), q.cols());
            *l = Linear::dense(r, c, q.dequantize().expect("dequantize")).expect("dense");
        }
    };
    for layer in &mut d.layers {
        use TensorKind::*;
        for kind in [AttnQ, AttnK, AttnV, AttnOutput, MlpGate, MlpUp, MlpDown] {
            densify(layer.linear_mut(kind).expect("block linear"));
        }
    }
    if let Some(h) = d.head.as_mut() {
        densify(h);
    }
    d
}

#[test]
fn packed_models_match_their_dequantized_weights() {
    let tokens: Vec<u32> = vec![1, 5, 9, 30, 2, 17, 17, 4, 0, 31, 12];
    for (bits, sym, g) in [(4, false, 32), (8, true, 64), (3, true, 32), (2, false, 16)] {
        let dir = tempfile::tempdir().unwrap();
        let scheme = QuantScheme::new(bits, sym, Granularity::Group(g)).unwrap();
        let out = quantized_tiny(dir.path(), scheme);
        let packed = CpuForward::load(&ModelView::open(&out).unwrap()).expect("load packed");
        let linears: Vec<&Linear> = packed
            .weights
            .layers
            .iter()
            .flat_map(|l| l.linears())
            .collect();
        assert!(
            linears.iter().all(|l| l.is_packed()),
            "W{bits}: every block linear stays packed"
        );
        let dense = CpuForward::new(dense_copy(&packed.weights));
        assert!(packed.weights.bytes() < dense.weights.bytes());
        let a = packed.logits(&tokens).expect("packed forward");
        let b = dense.logits(&tokens).expect("dense forward");
        let max = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = a
            .iter()
            .zip(&b)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        eprintln!("W{bits} g{g} sym={sym}: max |Δ| {d:.2e} of max |logit| {max:.3}");
        assert!(d <= 1e-4 * max, "W{bits}: max |Δ| {d}");
    }
}

#[test]
fn open_forward_runs_the_packed_model_on_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let scheme = QuantScheme::new(4, false, Granularity::Group(32)).unwrap();
    let out = quantized_tiny(dir.path(), scheme);
    let m = open_forward(&out, DeviceChoice::Cpu, None).expect("open");
    assert!(m.device().starts_with("cpu"), "{}", m.device());
    let logits = m.logits(&[3, 4, 5]).expect("logits");
    assert_eq!(logits.len(), 3 * m.arch().vocab_size);
    let mut dec = m.decoder(8).expect("decoder");
    let last = dec.feed(&[3, 4, 5]).expect("feed");
    let vocab = m.arch().vocab_size;
    let d = last
        .iter()
        .zip(&logits[2 * vocab..])
        .fold(0f32, |acc, (x, y)| acc.max((x - y).abs()));
    assert!(d < 1e-4, "decoder vs full logits: {d}");
}

/// A tied head held as its own linear (`kind`) gives the logits of the
/// f32 table it is tied to, and a step reads every weight but the f32
/// lookup copy.
fn check_tied_head(weights: LlamaWeights, kind: &str) {
    let (v, h) = (weights.arch.vocab_size, weights.arch.hidden_size);
    match (&weights.head, kind) {
        (Some(Linear::Packed(q)), "packed") => assert_eq!((q.rows(), q.cols()), (v, h)),
        (Some(Linear::Half(f)), "f16") => assert_eq!((f.rows, f.cols), (v, h)),
        (other, _) => panic!("tied head held as {other:?}, expected {kind}"),
    }
    assert_eq!(
        weights.step_bytes(),
        weights.bytes() - 4 * v * h,
        "a step reads all but the f32 lookup table"
    );
    let hidden: Vec<f32> = (0..2 * h)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
        .collect();
    let held = CpuForward::new(weights.clone())
        .final_norm_and_head(&hidden)
        .unwrap();
    let table = CpuForward::new(LlamaWeights {
        head: None,
        ..weights
    })
    .final_norm_and_head(&hidden)
    .unwrap();
    let scale = table.iter().fold(0f32, |m, x| m.max(x.abs()));
    let worst = held
        .iter()
        .zip(&table)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        worst <= 1e-4 * scale,
        "{kind} head off by {worst} (max |logit| {scale})"
    );
}

/// SmolLM2's head is tied to a Q8_0 `token_embd`: it runs as that packed
/// table (a quarter of the f32 bytes each decoded token reads). An llmq
/// folder `quantize` writes keeps the table in F16: its head runs as f16
/// (half the bytes).
#[test]
fn tied_embeddings_run_as_packed_or_f16_heads() {
    let view = ModelView::open(common::smollm2_gguf()).unwrap();
    check_tied_head(LlamaWeights::load(&view).unwrap(), "packed");

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("w4");
    let scheme = QuantScheme::new(4, false, Granularity::Group(128)).unwrap();
    let cfg = QuantizeConfig::new(common::smollm2_gguf(), &out, scheme).device(DeviceChoice::Cpu);
    llmq_gpu::quantize_model(&cfg, &mut |_| {}, &CancelToken::default()).expect("quantize");
    let view = ModelView::open(&out).unwrap();
    assert_eq!(view.tensor("token_embd.weight").unwrap().dtype, "F16");
    check_tied_head(LlamaWeights::load(&view).unwrap(), "f16");
}

//! Shared test helpers: the GPU context every cross-check uses, and fresh
//! random inputs with their seed printed so a failure can be replayed.
#![allow(dead_code)]

use llmq_gpu::backend::cpu::trace::quadratic_trace;
use llmq_gpu::backend::gpu::{DeviceChoice, GpuContext};
use llmq_gpu::gemm::dense_xwt;
use llmq_gpu::quant::gptq;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use safetensors::tensor::{serialize_to_file, Dtype, TensorView};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// The Vulkan device (lavapipe in CI). A machine without one fails the test
/// with instructions; GPU tests never pass silently.
pub fn gpu() -> Arc<GpuContext> {
    static CTX: OnceLock<Arc<GpuContext>> = OnceLock::new();
    CTX.get_or_init(|| {
        let name = std::env::var("LLMQ_TEST_ADAPTER").ok();
        match GpuContext::new(DeviceChoice::Vulkan, name.as_deref()) {
            Ok(ctx) => Arc::new(ctx),
            Err(e) => panic!(
                "GPU-vs-CPU tests need a Vulkan adapter (lavapipe is enough: \
                 `apt-get install mesa-vulkan-drivers`): {e}"
            ),
        }
    })
    .clone()
}

/// The SmolLM2-135M GGUF fixture: `LLMQ_SMOLLM2_GGUF`, else the file that
/// scripts/fetch-fixtures.sh caches. Missing, the test fails and says how to fetch it.
pub fn smollm2_gguf() -> PathBuf {
    let p = std::env::var_os("LLMQ_SMOLLM2_GGUF")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join(".cache/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    assert!(
        p.is_file(),
        "SmolLM2 GGUF fixture not found at {}: run scripts/fetch-fixtures.sh (or set LLMQ_SMOLLM2_GGUF)",
        p.display()
    );
    p
}

/// The Python interpreter for reference implementations (`LLMQ_PYTHON`, else
/// `python3`), after checking it has the packages they import; fails the
/// test with the install command if not.
pub fn python_with_references() -> String {
    let python = std::env::var("LLMQ_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = std::process::Command::new(&python)
        .args(["-c", "import gguf, numpy"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "python package 'gguf' (or numpy) missing: pip install -r scripts/requirements-test.txt"
    );
    python
}

/// A fresh GPU context, for tests that change its settings (binding limit).
pub fn fresh_gpu() -> GpuContext {
    let name = std::env::var("LLMQ_TEST_ADAPTER").ok();
    GpuContext::new(DeviceChoice::Vulkan, name.as_deref())
        .unwrap_or_else(|e| panic!("GPU-vs-CPU tests need a Vulkan adapter: {e}"))
}

/// A seeded RNG; the seed comes from `LLMQ_TEST_SEED` or is fresh, and is printed.
pub fn rng(test: &str) -> rand::rngs::StdRng {
    let seed = std::env::var("LLMQ_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen::<u64>());
    eprintln!("{test}: seed {seed} (replay with LLMQ_TEST_SEED={seed})");
    rand::rngs::StdRng::seed_from_u64(seed)
}

/// Weights with a realistic spread: mostly small normal-ish values plus a
/// few outliers, so rounding and clipping are both exercised.
pub fn random_weights(rng: &mut impl Rng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let u: f32 = (0..4).map(|_| rng.gen::<f32>() - 0.5).sum::<f32>() * 0.05;
            if rng.gen::<f32>() < 0.002 {
                u * 20.0
            } else {
                u
            }
        })
        .collect()
}

const HIDDEN: usize = 64;
const FFN: usize = 128;

/// A one-layer Llama in Hugging Face layout. `poison` puts a NaN into that tensor.
pub fn tiny_llama(dir: &Path, poison: Option<&str>) -> PathBuf {
    let model = dir.join("tiny-llama");
    std::fs::create_dir_all(&model).unwrap();
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": HIDDEN, "intermediate_size": FFN, "num_hidden_layers": 1,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 32,
        "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "tie_word_embeddings": true
    });
    std::fs::write(model.join("config.json"), config.to_string()).unwrap();
    std::fs::write(model.join("tokenizer.json"), "{\"version\": \"1.0\"}").unwrap();
    let p = "model.layers.0.";
    let shapes: Vec<(String, Vec<usize>)> = vec![
        ("model.embed_tokens.weight".into(), vec![32, HIDDEN]),
        ("model.norm.weight".into(), vec![HIDDEN]),
        (format!("{p}input_layernorm.weight"), vec![HIDDEN]),
        (format!("{p}post_attention_layernorm.weight"), vec![HIDDEN]),
        (format!("{p}self_attn.q_proj.weight"), vec![HIDDEN, HIDDEN]),
        (
            format!("{p}self_attn.k_proj.weight"),
            vec![HIDDEN / 2, HIDDEN],
        ),
        (
            format!("{p}self_attn.v_proj.weight"),
            vec![HIDDEN / 2, HIDDEN],
        ),
        (format!("{p}self_attn.o_proj.weight"), vec![HIDDEN, HIDDEN]),
        (format!("{p}mlp.gate_proj.weight"), vec![FFN, HIDDEN]),
        (format!("{p}mlp.up_proj.weight"), vec![FFN, HIDDEN]),
        (format!("{p}mlp.down_proj.weight"), vec![HIDDEN, FFN]),
    ];
    let data: Vec<(String, Vec<usize>, Vec<f32>)> = shapes
        .into_iter()
        .enumerate()
        .map(|(k, (name, shape))| {
            let n: usize = shape.iter().product();
            let mut v: Vec<f32> = (0..n)
                .map(|i| (((i * 7 + k * 13) % 29) as f32 - 14.0) / 50.0)
                .collect();
            if poison == Some(name.as_str()) {
                v[n / 2] = f32::NAN;
            }
            (name, shape, v)
        })
        .collect();
    write_f32_safetensors(&model.join("model.safetensors"), &data);
    model
}

/// Writes `(name, shape, values)` tensors as an f32 safetensors file.
pub fn write_f32_safetensors(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)]) {
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, s, v)| {
            let bytes: &[u8] = bytemuck::cast_slice(v);
            (
                n.clone(),
                TensorView::new(Dtype::F32, s.clone(), bytes).unwrap(),
            )
        })
        .collect();
    serialize_to_file(views, None, path).unwrap();
}

/// Standard normal via Box–Muller.
pub fn normal(rng: &mut impl Rng) -> f32 {
    let u1: f32 = rng.gen::<f32>().max(1e-12);
    let u2: f32 = rng.gen();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
}

/// Correlated inputs `[tokens, cols]`: rank-`rank` signal plus 10% noise,
/// with per-feature scales spread over 10x (so H is far from diagonal and
/// its diagonal uneven, as in real activations).
pub fn correlated_inputs(rng: &mut impl Rng, tokens: usize, cols: usize, rank: usize) -> Vec<f32> {
    let a: Vec<f32> = (0..rank * cols).map(|_| normal(rng)).collect();
    let scale: Vec<f32> = (0..cols).map(|_| 10f32.powf(rng.gen::<f32>())).collect();
    let mut x = vec![0f32; tokens * cols];
    for row in x.chunks_mut(cols) {
        let z: Vec<f32> = (0..rank).map(|_| normal(rng)).collect();
        for (c, (v, s)) in row.iter_mut().zip(&scale).enumerate() {
            let signal: f32 = z
                .iter()
                .enumerate()
                .map(|(k, zk)| zk * a[k * cols + c])
                .sum();
            *v = s * (signal + 0.1 * normal(rng));
        }
    }
    x
}

/// `tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)` with `ΔW = W − Ŵ`: the relative output
/// error of the quantized weight `w_hat` on the inputs whose Hessian is `h`
/// (0 when `W H Wᵀ` vanishes), on the host; shapes are the caller's to get
/// right.
pub fn proxy_error(w: &[f32], w_hat: &[f32], h: &[f32], rows: usize, cols: usize) -> f64 {
    debug_assert_eq!(w.len(), rows * cols);
    gptq::relative_to(
        quadratic_trace(
            &w.iter().zip(w_hat).map(|(a, b)| a - b).collect::<Vec<_>>(),
            h,
            cols,
        ),
        quadratic_trace(w, h, cols),
    )
}

/// `‖X Wᵀ − X Ŵᵀ‖² / ‖X Wᵀ‖²` for inputs `x` `[tokens, cols]`: the true
/// relative output error of a quantized linear (0 when `X Wᵀ` vanishes).
pub fn output_error(
    w: &[f32],
    w_hat: &[f32],
    x: &[f32],
    rows: usize,
    cols: usize,
    tokens: usize,
) -> f64 {
    let y = dense_xwt(x, w, tokens, cols, rows);
    let y_hat = dense_xwt(x, w_hat, tokens, cols, rows);
    let (num, den) = y
        .par_iter()
        .zip(y_hat.par_iter())
        .map(|(&a, &b)| (((a - b) as f64).powi(2), (a as f64).powi(2)))
        .reduce(|| (0.0, 0.0), |p, q| (p.0 + q.0, p.1 + q.1));
    if den <= 0.0 {
        0.0
    } else {
        num / den
    }
}

/// Character-level tokenizer of the tiny model: 32 ids, `<s>` is BOS.
pub fn tiny_tokenizer(model: &Path, add_bos: bool) {
    let mut vocab = serde_json::Map::new();
    for (i, t) in ["<unk>", "<s>", "</s>"].iter().enumerate() {
        vocab.insert(t.to_string(), i.into());
    }
    for (i, c) in ('a'..='z').chain(['.', ',', '?']).enumerate() {
        vocab.insert(c.to_string(), (i + 3).into());
    }
    assert_eq!(vocab.len(), 32);
    let special = |id: u32, content: &str| {
        serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true})
    };
    let tok = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [special(0, "<unk>"), special(1, "<s>"), special(2, "</s>")],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null, "decoder": null,
        "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>",
            "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": []}
    });
    std::fs::write(model.join("tokenizer.json"), tok.to_string()).unwrap();
    let cfg = serde_json::json!({"add_bos_token": add_bos, "bos_token": "<s>"});
    std::fs::write(model.join("tokenizer_config.json"), cfg.to_string()).unwrap();
}

/// A text of `words` short lower-case words for the tiny model (about 4 tokens each).
pub fn text(dir: &Path, words: usize) -> PathBuf {
    let list = [
        "the", "cat", "sat", "on", "a", "warm", "mat", "and", "slept.",
    ];
    let body: Vec<&str> = (0..words)
        .map(|i| list[(i * 5 + i / 3) % list.len()])
        .collect();
    let p = dir.join(format!("text-{words}.txt"));
    std::fs::write(&p, body.join(" ")).unwrap();
    p
}

/// The tiny Llama with its character-level tokenizer.
pub fn tiny(dir: &Path, add_bos: bool) -> PathBuf {
    let m = tiny_llama(dir, None);
    tiny_tokenizer(&m, add_bos);
    m
}

/// A random 2-layer Llama (Hugging Face layout) with a word-level
/// tokenizer, for GPTQ pipeline tests.
pub mod gptq_model {
    use rand::Rng;
    use std::path::{Path, PathBuf};

    pub const VOCAB: usize = 64;
    pub const HIDDEN: usize = 64;
    pub const FFN: usize = 160;
    pub const LAYERS: usize = 2;

    /// A random 2-layer Llama (HF layout) with a word-level tokenizer over
    /// `w2 … w63`, and a calibration text of random words. `edit` may change a
    /// tensor before it is written.
    pub fn tiny_model(
        dir: &Path,
        rng: &mut impl Rng,
        edit: &dyn Fn(&str, &mut Vec<f32>),
    ) -> PathBuf {
        let model = dir.join("tiny");
        std::fs::create_dir_all(&model).unwrap();
        let config = serde_json::json!({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "hidden_size": HIDDEN, "intermediate_size": FFN, "num_hidden_layers": LAYERS,
            "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": VOCAB,
            "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
            "tie_word_embeddings": true, "bos_token_id": 1
        });
        std::fs::write(model.join("config.json"), config.to_string()).unwrap();
        let mut vocab = serde_json::Map::new();
        vocab.insert("<unk>".into(), 0.into());
        vocab.insert("<s>".into(), 1.into());
        for i in 2..VOCAB {
            vocab.insert(format!("w{i}"), i.into());
        }
        let tokenizer = serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": null, "pre_tokenizer": {"type": "Whitespace"},
            "post_processor": null, "decoder": null,
            "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
        });
        std::fs::write(model.join("tokenizer.json"), tokenizer.to_string()).unwrap();
        std::fs::write(
            model.join("tokenizer_config.json"),
            r#"{"bos_token": "<s>", "add_bos_token": true}"#,
        )
        .unwrap();

        let mut tensors = vec![("model.embed_tokens.weight".to_string(), vec![VOCAB, HIDDEN])];
        tensors.push(("model.norm.weight".into(), vec![HIDDEN]));
        for l in 0..LAYERS {
            let p = format!("model.layers.{l}.");
            for (name, shape) in [
                ("input_layernorm", vec![HIDDEN]),
                ("post_attention_layernorm", vec![HIDDEN]),
                ("self_attn.q_proj", vec![HIDDEN, HIDDEN]),
                ("self_attn.k_proj", vec![HIDDEN / 2, HIDDEN]),
                ("self_attn.v_proj", vec![HIDDEN / 2, HIDDEN]),
                ("self_attn.o_proj", vec![HIDDEN, HIDDEN]),
                ("mlp.gate_proj", vec![FFN, HIDDEN]),
                ("mlp.up_proj", vec![FFN, HIDDEN]),
                ("mlp.down_proj", vec![HIDDEN, FFN]),
            ] {
                tensors.push((format!("{p}{name}.weight"), shape));
            }
        }
        let data: Vec<(String, Vec<usize>, Vec<f32>)> = tensors
            .into_iter()
            .map(|(name, shape)| {
                let n: usize = shape.iter().product();
                let mut v = if name.contains("norm") {
                    (0..n).map(|_| 0.8 + 0.4 * rng.gen::<f32>()).collect()
                } else if name.contains("embed") {
                    (0..n).map(|_| rng.gen::<f32>() * 2.0 - 1.0).collect()
                } else {
                    super::random_weights(rng, n)
                };
                edit(&name, &mut v);
                (name, shape, v)
            })
            .collect();
        super::write_f32_safetensors(&model.join("model.safetensors"), &data);
        let words: Vec<String> = (0..4000)
            .map(|_| format!("w{}", rng.gen_range(2..VOCAB)))
            .collect();
        std::fs::write(dir.join("calib.txt"), words.join(" ")).unwrap();
        model
    }
}

/// Runs the `llmq-gpu` binary with `args`.
pub fn llmq(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_llmq-gpu"))
        .args(args)
        .output()
        .expect("the llmq-gpu binary runs")
}

pub fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// tests/py/gguf_requantize_ref.py's exact fingerprint of f32 values: the
/// bit patterns' sum and position-weighted sum modulo 2⁶⁴, as decimals.
pub fn fingerprint(x: &[f32]) -> [String; 2] {
    let (mut sum, mut weighted) = (0u64, 0u64);
    for (i, v) in x.iter().enumerate() {
        let b = u64::from(v.to_bits());
        sum = sum.wrapping_add(b);
        weighted = weighted.wrapping_add(b.wrapping_mul(i as u64 + 1));
    }
    [sum.to_string(), weighted.to_string()]
}

/// Asserts `|got − want| ≤ 1e-4 · (mag + 1e-6)` per output, `mag` the
/// output's Σ|w·x| (f32 accumulation in another order than the reference).
pub fn check_within_magnitudes(label: &str, got: &[f32], want: &[f64], mag: &[f64]) {
    assert_eq!(got.len(), want.len(), "{label}: output length");
    for (i, ((g, w), m)) in got.iter().zip(want).zip(mag).enumerate() {
        let tol = 1e-4 * (m + 1e-6);
        let err = (*g as f64 - w).abs();
        assert!(
            err <= tol,
            "{label}: output {i}: got {g}, reference {w}, error {err:.3e} > tolerance {tol:.3e}"
        );
    }
}

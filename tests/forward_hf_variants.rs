//! Llama-family variants the SmolLM2 fixture does not exercise, on small
//! random Hugging Face folders, against the independent numpy forward in
//! tests/py/hf_forward.py: Qwen2 q/k/v biases, RoPE scaling (linear and
//! Llama 3.1), an untied head, GQA, several layers. HF layout means
//! half-split RoPE. Tolerance: max |Δlogit| ≤ 1e-4 · max |logit|.

mod common;

use llmq_gpu::model::forward::gpu::GpuForward;
use llmq_gpu::model::forward::{CpuForward, Forward};
use llmq_gpu::ModelView;
use rand::Rng;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;

const H: usize = 64;
const F: usize = 96;
const VOCAB: usize = 40;
const LAYERS: usize = 2;

/// A random model with `extra` merged into its config.json.
fn model(dir: &Path, name: &str, extra: Value, biases: bool, untied: bool) -> PathBuf {
    let mut rng = common::rng(name);
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    let mut cfg = json!({
        "model_type": "llama", "hidden_size": H, "intermediate_size": F,
        "num_hidden_layers": LAYERS, "num_attention_heads": 8, "num_key_value_heads": 2,
        "vocab_size": VOCAB, "max_position_embeddings": 4096, "rms_norm_eps": 1e-6,
        "rope_theta": 500000.0, "tie_word_embeddings": !untied
    });
    for (k, v) in extra.as_object().unwrap() {
        cfg[k] = v.clone();
    }
    std::fs::write(d.join("config.json"), cfg.to_string()).unwrap();
    let kv = 2 * H / 8;
    let mut shapes: Vec<(String, Vec<usize>)> = vec![
        ("model.embed_tokens.weight".into(), vec![VOCAB, H]),
        ("model.norm.weight".into(), vec![H]),
    ];
    if untied {
        shapes.push(("lm_head.weight".into(), vec![VOCAB, H]));
    }
    for i in 0..LAYERS {
        let p = format!("model.layers.{i}.");
        for (n, s) in [
            ("input_layernorm.weight", vec![H]),
            ("post_attention_layernorm.weight", vec![H]),
            ("self_attn.q_proj.weight", vec![H, H]),
            ("self_attn.k_proj.weight", vec![kv, H]),
            ("self_attn.v_proj.weight", vec![kv, H]),
            ("self_attn.o_proj.weight", vec![H, H]),
            ("mlp.gate_proj.weight", vec![F, H]),
            ("mlp.up_proj.weight", vec![F, H]),
            ("mlp.down_proj.weight", vec![H, F]),
        ] {
            shapes.push((format!("{p}{n}"), s));
        }
        if biases {
            for (n, len) in [("q", H), ("k", kv), ("v", kv)] {
                shapes.push((format!("{p}self_attn.{n}_proj.bias"), vec![len]));
            }
        }
    }
    let data: Vec<(String, Vec<usize>, Vec<f32>)> = shapes
        .into_iter()
        .map(|(n, s)| {
            let len: usize = s.iter().product();
            let norm = n.contains("norm");
            let v: Vec<f32> = (0..len)
                .map(|_| {
                    let u: f32 = rng.gen_range(-1.0..1.0);
                    if norm {
                        1.0 + 0.2 * u
                    } else {
                        0.15 * u
                    }
                })
                .collect();
            (n, s, v)
        })
        .collect();
    common::write_f32_safetensors(&d.join("model.safetensors"), &data);
    d
}

fn numpy_logits(model: &Path, tokens: &[u32]) -> Vec<f32> {
    let python = common::python_with_references();
    let out = model.join("ref.f32");
    let ids: Vec<String> = tokens.iter().map(|t| t.to_string()).collect();
    let o = Command::new(python)
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py/hf_forward.py"))
        .arg(model)
        .arg(&out)
        .arg(ids.join(","))
        .output()
        .expect("run hf_forward.py");
    assert!(
        o.status.success(),
        "hf_forward.py: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    bytemuck::cast_slice(&std::fs::read(&out).unwrap()).to_vec()
}

fn check(model: &Path) {
    // Positions far enough apart that RoPE scaling changes the result.
    let tokens: Vec<u32> = (0..40).map(|i| (i * 7 + 3) % VOCAB as u32).collect();
    let ours = CpuForward::load(&ModelView::open(model).expect("open"))
        .expect("load")
        .logits(&tokens)
        .expect("forward");
    let want = numpy_logits(model, &tokens);
    assert_eq!(ours.len(), want.len());
    let max = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = ours
        .iter()
        .zip(&want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    eprintln!("{}: max |Δ| {d:.2e}, max |logit| {max:.3}", model.display());
    assert!(d <= 1e-4 * max, "{}: max |Δ| {d}", model.display());
}

#[test]
fn qwen2_biases_and_untied_head_match_numpy() {
    let dir = tempfile::tempdir().unwrap();
    check(&model(
        dir.path(),
        "qwen2",
        json!({"model_type": "qwen2"}),
        true,
        true,
    ));
}

#[test]
fn rope_scaling_matches_numpy() {
    let dir = tempfile::tempdir().unwrap();
    let llama3 = json!({"rope_scaling": {"rope_type": "llama3", "factor": 8.0,
        "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 32}});
    check(&model(dir.path(), "llama3", llama3, false, false));
    let linear = json!({"rope_scaling": {"type": "linear", "factor": 4.0}});
    check(&model(dir.path(), "linear", linear, false, false));
}

/// The GPU forward (lavapipe in CI) gives the CPU logits on the same
/// variants: biases and scaled RoPE reach the GPU path too.
#[test]
fn gpu_matches_cpu_on_biases_and_scaled_rope() {
    let dir = tempfile::tempdir().unwrap();
    let llama3 = json!({"model_type": "qwen2", "rope_scaling": {"rope_type": "llama3",
        "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 32}});
    let m = model(dir.path(), "gpu-variant", llama3, true, true);
    let view = ModelView::open(&m).expect("open");
    let weights = llmq_gpu::model::forward::LlamaWeights::load(&view).expect("load");
    assert!(weights.layers[0].qkv_bias.is_some());
    let tokens: Vec<u32> = (0..40).map(|i| (i * 11 + 5) % VOCAB as u32).collect();
    let cpu = CpuForward::new(weights.clone())
        .logits(&tokens)
        .expect("cpu");
    let gpu = GpuForward::new(common::gpu(), weights)
        .expect("upload")
        .logits(&tokens)
        .expect("gpu");
    let max = cpu.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = cpu
        .iter()
        .zip(&gpu)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    eprintln!("GPU vs CPU: max |Δ| {d:.2e}, max |logit| {max:.3}");
    assert!(d <= 1e-4 * max, "max |Δ| {d}");
}

#[test]
fn unsupported_rope_scaling_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let yarn = json!({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}});
    let m = model(dir.path(), "yarn", yarn, false, false);
    let view = ModelView::open(&m).expect("quantizing such a model still works");
    let e = CpuForward::load(&view).err().expect("forward must refuse");
    assert!(e.to_string().contains("RoPE scaling 'yarn'"), "{e}");
}

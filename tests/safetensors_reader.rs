//! The Hugging Face safetensors reader: single files, shards, dtypes,
//! config.json parsing, companion files and the errors for broken inputs.

use half::{bf16, f16};
use llmq_gpu::formats::safetensors_model::SafetensorsModel;
use llmq_gpu::model::{ModelView, TensorSource};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use std::path::Path;

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}
fn f16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|x| f16::from_f32(*x).to_bits().to_le_bytes())
        .collect()
}
fn bf16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|x| bf16::from_f32(*x).to_bits().to_le_bytes())
        .collect()
}

/// Writes `(name, dtype, shape, bytes)` tensors as one safetensors file.
fn write_st(path: &Path, tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) {
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.to_string(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    let meta = Some([("format".to_string(), "pt".to_string())].into());
    safetensors::serialize_to_file(views, meta, path).unwrap();
}

fn llama_config() -> serde_json::Value {
    serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 8,
        "intermediate_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "vocab_size": 4,
        "max_position_embeddings": 128,
        "rms_norm_eps": 1e-5,
    })
}

fn write_config(dir: &Path, cfg: &serde_json::Value) {
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
}

fn values(n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|i| (i as f32 - n as f32 / 2.0) * scale)
        .collect()
}

#[test]
fn single_file_folder_reads_f32_f16_bf16() {
    let dir = tempfile::tempdir().unwrap();
    let emb = values(32, 0.25);
    let q = values(64, 0.125);
    let norm = values(8, 0.5);
    write_st(
        &dir.path().join("model.safetensors"),
        &[
            (
                "model.embed_tokens.weight",
                Dtype::F32,
                vec![4, 8],
                f32_bytes(&emb),
            ),
            (
                "model.layers.0.self_attn.q_proj.weight",
                Dtype::F16,
                vec![8, 8],
                f16_bytes(&q),
            ),
            ("model.norm.weight", Dtype::BF16, vec![8], bf16_bytes(&norm)),
            ("idx", Dtype::I64, vec![1], vec![0u8; 8]),
        ],
    );
    write_config(dir.path(), &llama_config());
    std::fs::write(dir.path().join("tokenizer.json"), "{}").unwrap();
    std::fs::write(dir.path().join("generation_config.json"), "{}").unwrap();

    let m = SafetensorsModel::open(dir.path()).unwrap();
    assert_eq!(m.format_name(), "safetensors");
    let t = m.tensors();
    assert_eq!(t.len(), 4);
    let info = t
        .iter()
        .find(|t| t.name == "model.layers.0.self_attn.q_proj.weight")
        .unwrap();
    assert_eq!(info.shape, vec![8, 8]);
    assert_eq!(info.dtype, "F16");

    assert_eq!(m.load_f32("model.embed_tokens.weight").unwrap(), emb);
    // These values are exact in f16 and bf16.
    assert_eq!(
        m.load_f32("model.layers.0.self_attn.q_proj.weight")
            .unwrap(),
        q
    );
    assert_eq!(m.load_f32("model.norm.weight").unwrap(), norm);

    let err = m.load_f32("idx").unwrap_err().to_string();
    assert!(err.contains("idx") && err.contains("I64"), "{err}");
    assert!(m.load_f32("nope").is_err());

    let a = m.arch();
    assert_eq!(a.architecture, "llama");
    assert_eq!((a.hidden_size, a.intermediate_size), (8, 16));
    assert_eq!((a.num_layers, a.num_heads, a.num_kv_heads), (1, 2, 1));
    assert_eq!((a.vocab_size, a.context_length), (4, 128));
    assert_eq!(a.rope_theta, 10000.0);
    assert_eq!(a.rms_norm_eps, 1e-5);
    assert!(a.tied_embeddings, "no lm_head.weight means tied");
    assert!(!a.rope_adjacent_pairs);

    let comps: Vec<String> = m
        .companion_files()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(comps, vec!["tokenizer.json", "generation_config.json"]);

    let meta = m.metadata();
    assert!(meta.iter().any(|(k, v)| k == "model_type" && v == "llama"));
    let st_meta = meta.iter().find(|(k, _)| k == "__metadata__").unwrap();
    assert_eq!(st_meta.1["format"], "pt");

    // The same through ModelView and through the file path.
    let view = ModelView::open(dir.path()).unwrap();
    assert_eq!(view.format_name(), "safetensors");
    let view = ModelView::open(dir.path().join("model.safetensors")).unwrap();
    assert_eq!(view.load_f32("model.embed_tokens.weight").unwrap(), emb);
}

fn write_sharded(dir: &Path) -> (Vec<f32>, Vec<f32>) {
    let a = values(16, 1.0);
    let b = values(8, 2.0);
    write_st(
        &dir.join("model-00001-of-00002.safetensors"),
        &[(
            "model.embed_tokens.weight",
            Dtype::F32,
            vec![4, 4],
            f32_bytes(&a),
        )],
    );
    write_st(
        &dir.join("model-00002-of-00002.safetensors"),
        &[("lm_head.weight", Dtype::F32, vec![2, 4], f32_bytes(&b))],
    );
    let index = serde_json::json!({
        "metadata": {"total_size": 96},
        "weight_map": {
            "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
            "lm_head.weight": "model-00002-of-00002.safetensors",
        }
    });
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    let mut cfg = llama_config();
    cfg["model_type"] = "qwen2".into();
    cfg["rope_theta"] = 1_000_000.0.into();
    write_config(dir, &cfg);
    (a, b)
}

#[test]
fn sharded_folder_follows_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = write_sharded(dir.path());
    let m = SafetensorsModel::open(dir.path()).unwrap();
    assert_eq!(m.tensors().len(), 2);
    assert_eq!(m.load_f32("model.embed_tokens.weight").unwrap(), a);
    assert_eq!(m.load_f32("lm_head.weight").unwrap(), b);
    assert_eq!(m.arch().architecture, "qwen2");
    assert_eq!(m.arch().rope_theta, 1_000_000.0);
    assert!(!m.arch().tied_embeddings, "lm_head.weight present");
}

#[test]
fn missing_shard_is_named() {
    let dir = tempfile::tempdir().unwrap();
    write_sharded(dir.path());
    std::fs::remove_file(dir.path().join("model-00002-of-00002.safetensors")).unwrap();
    let err = SafetensorsModel::open(dir.path())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("model-00002-of-00002.safetensors"), "{err}");
    assert!(err.contains("missing"), "{err}");
}

#[test]
fn tensor_missing_from_its_shard_is_named() {
    let dir = tempfile::tempdir().unwrap();
    write_sharded(dir.path());
    let index = serde_json::json!({
        "weight_map": {
            "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
            "lm_head.weight": "model-00002-of-00002.safetensors",
            "model.norm.weight": "model-00002-of-00002.safetensors",
        }
    });
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let err = SafetensorsModel::open(dir.path())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("model.norm.weight"), "{err}");
    assert!(err.contains("model-00002-of-00002.safetensors"), "{err}");
}

#[test]
fn shard_names_that_leave_the_folder_are_refused() {
    // A real shard outside the model folder: the index must not reach it.
    let outer = tempfile::tempdir().unwrap();
    let dir = outer.path().join("model");
    std::fs::create_dir(&dir).unwrap();
    write_sharded(&dir);
    std::fs::copy(
        dir.join("model-00002-of-00002.safetensors"),
        outer.path().join("outside.safetensors"),
    )
    .unwrap();
    let outside = outer.path().join("outside.safetensors");
    for name in [
        "../outside.safetensors",
        outside.to_str().unwrap(),
        "sub/../../outside.safetensors",
        "..",
        "",
    ] {
        let index = serde_json::json!({
            "weight_map": {
                "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
                "lm_head.weight": name,
            }
        });
        std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
        let err = SafetensorsModel::open(&dir).err().map(|e| e.to_string());
        let err = err.unwrap_or_else(|| panic!("'{name}' was opened"));
        assert!(err.contains("plain file names"), "{name}: {err}");
        assert!(err.contains("lm_head.weight"), "{name}: {err}");
    }
}

#[test]
fn garbage_header_is_rejected_with_the_file_name() {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &llama_config());
    let file = dir.path().join("model.safetensors");

    std::fs::write(&file, b"this is not a safetensors file at all").unwrap();
    let err = SafetensorsModel::open(dir.path())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("model.safetensors"), "{err}");

    // Header length says 1000 bytes, the file has 10.
    let mut bytes = 1000u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{\"a\":1}   ");
    std::fs::write(&file, bytes).unwrap();
    let err = SafetensorsModel::open(dir.path())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("model.safetensors") && err.contains("header"),
        "{err}"
    );

    std::fs::write(&file, b"abc").unwrap();
    let err = SafetensorsModel::open(dir.path())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("truncated"), "{err}");
}

#[test]
fn data_past_the_end_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &llama_config());
    let file = dir.path().join("model.safetensors");
    write_st(&file, &[("w", Dtype::F32, vec![4], f32_bytes(&[1.0; 4]))]);
    let mut bytes = std::fs::read(&file).unwrap();
    bytes.truncate(bytes.len() - 4);
    std::fs::write(&file, bytes).unwrap();
    let err = SafetensorsModel::open(dir.path())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("model.safetensors"), "{err}");
}

#[test]
fn unknown_architecture_is_not_supported() {
    let dir = tempfile::tempdir().unwrap();
    write_st(
        &dir.path().join("model.safetensors"),
        &[(
            "h.0.attn.c_attn.weight",
            Dtype::F32,
            vec![2],
            f32_bytes(&[1.0, 2.0]),
        )],
    );
    write_config(
        dir.path(),
        &serde_json::json!({"model_type": "gpt2", "n_embd": 8, "architectures": ["GPT2LMHeadModel"]}),
    );
    let m = SafetensorsModel::open(dir.path()).unwrap();
    assert_eq!(m.arch().architecture, "gpt2");
    let err = ModelView::open(dir.path()).err().unwrap().to_string();
    assert!(
        err.contains("not supported") && err.contains("gpt2"),
        "{err}"
    );
}

#[test]
fn architecture_from_architectures_list_and_missing_key() {
    let dir = tempfile::tempdir().unwrap();
    write_st(
        &dir.path().join("model.safetensors"),
        &[("w", Dtype::F32, vec![1], f32_bytes(&[1.0]))],
    );
    let mut cfg = llama_config();
    cfg.as_object_mut().unwrap().remove("model_type");
    cfg["architectures"] = serde_json::json!(["MistralForCausalLM"]);
    cfg.as_object_mut().unwrap().remove("num_key_value_heads");
    write_config(dir.path(), &cfg);
    let m = SafetensorsModel::open(dir.path()).unwrap();
    assert_eq!(m.arch().architecture, "mistral");
    assert_eq!(m.arch().num_kv_heads, 2, "defaults to the head count");

    cfg.as_object_mut().unwrap().remove("hidden_size");
    write_config(dir.path(), &cfg);
    let err = SafetensorsModel::open(dir.path())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("config.json") && err.contains("hidden_size"),
        "{err}"
    );
}

#[test]
fn single_file_needs_config_beside_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("weights.safetensors");
    write_st(&file, &[("w", Dtype::F32, vec![1], f32_bytes(&[1.0]))]);
    let err = SafetensorsModel::open(&file).err().unwrap().to_string();
    assert!(err.contains("config.json"), "{err}");
    write_config(dir.path(), &llama_config());
    let m = SafetensorsModel::open(&file).unwrap();
    assert_eq!(m.load_f32("w").unwrap(), vec![1.0]);
}

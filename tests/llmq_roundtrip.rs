//! The llmq output format: what the writer stores comes back exactly (scales
//! and kept tensors up to f16 rounding), and output folders appear whole or
//! not at all.

use half::f16;
use llmq_gpu::encoding::affine::packing::pack_codes;
use llmq_gpu::encoding::affine::scheme::{Granularity, QuantScheme};
use llmq_gpu::encoding::QuantizedTensor;
use llmq_gpu::formats::llmq::{LlmqModel, LlmqWriter, StoredKind};
use llmq_gpu::model::{ArchConfig, ModelView, TensorSource};
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};

fn arch() -> ArchConfig {
    ArchConfig {
        architecture: "llama".into(),
        hidden_size: 64,
        intermediate_size: 128,
        num_layers: 1,
        num_heads: 4,
        num_kv_heads: 2,
        vocab_size: 32,
        context_length: 256,
        rope_theta: 10000.0,
        rms_norm_eps: 1e-5,
        tied_embeddings: true,
        rope_adjacent_pairs: false,
        rope_scaling: None,
    }
}

fn random_q(rng: &mut impl Rng, rows: usize, cols: usize, scheme: QuantScheme) -> QuantizedTensor {
    let codes: Vec<u32> = (0..rows * cols)
        .map(|_| rng.gen_range(0..=scheme.max_code()))
        .collect();
    let groups = cols / scheme.group_len(cols);
    let params = rows * groups;
    let zeros = if scheme.symmetric {
        vec![(1u32 << (scheme.bits - 1)) as u8; params]
    } else {
        (0..params)
            .map(|_| rng.gen_range(0..=scheme.max_code()) as u8)
            .collect()
    };
    QuantizedTensor {
        rows,
        cols,
        scheme,
        packed: pack_codes(&codes, rows, cols, scheme.bits),
        scales: (0..params).map(|_| rng.gen_range(1e-4f32..0.1)).collect(),
        zeros,
    }
}

fn f16_round(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| f16::from_f32(x).to_f32()).collect()
}

fn schemes() -> Vec<QuantScheme> {
    let mut out = Vec::new();
    for bits in [2, 3, 4, 8] {
        for symmetric in [true, false] {
            for g in [
                Granularity::Group(32),
                Granularity::PerChannel,
                Granularity::PerTensor,
            ] {
                out.push(QuantScheme::new(bits, symmetric, g).unwrap());
            }
        }
    }
    out
}

/// A quantized tensor as written: name, original shape, data.
type Written = (String, Vec<usize>, QuantizedTensor);

/// Writes every scheme plus two kept tensors; returns what was written.
fn write_model(out: &Path, shard_bytes: u64) -> (Vec<Written>, Vec<f32>, PathBuf) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut w = LlmqWriter::create(out, false)
        .unwrap()
        .with_shard_bytes(shard_bytes);
    let mut quantized = Vec::new();
    for (i, s) in schemes().into_iter().enumerate() {
        let name = format!("model.layers.{i}.mlp.up_proj.weight");
        let q = random_q(&mut rng, 6, 64, s);
        // One 3-D tensor to check that original shapes survive.
        let shape = if i == 0 { vec![2, 3, 64] } else { vec![6, 64] };
        w.add_quantized(&name, &shape, &q, "rtn").unwrap();
        quantized.push((name, shape, q));
    }
    let norm: Vec<f32> = (0..64).map(|_| rng.gen_range(-3.0f32..3.0)).collect();
    w.add_kept("model.norm.weight", &[64], &norm).unwrap();
    w.add_kept(
        "model.embed_tokens.weight",
        &[2, 2],
        &[1.0, -2.0, 0.5, 65504.0],
    )
    .unwrap();
    assert!(w.bytes_written() > 0);

    let src = tempfile::tempdir().unwrap();
    let tok = src.path().join("tokenizer.json");
    std::fs::write(&tok, "{\"model\": {}}").unwrap();
    let meta = vec![
        ("general.name".to_string(), serde_json::json!("tiny")),
        (
            "tokenizer.ggml.tokens".to_string(),
            serde_json::json!(["a", "b"]),
        ),
    ];
    let path = w
        .finish(
            &arch(),
            Path::new("/models/tiny.gguf"),
            meta,
            &[tok],
            serde_json::json!({"mse": 0.5}),
        )
        .unwrap();
    (quantized, norm, path)
}

fn check_model(out: &Path, quantized: &[Written], norm: &[f32]) {
    let m = LlmqModel::open(out).unwrap();
    assert_eq!(m.format_name(), "llmq");
    assert_eq!(m.arch(), &arch());
    assert_eq!(m.tensors().len(), quantized.len() + 2);
    for (name, shape, q) in quantized {
        let got = m.load_quantized(name).unwrap().unwrap();
        let mut want = q.clone();
        want.scales = f16_round(&q.scales);
        assert_eq!(got, want, "{name} ({})", q.scheme.label());
        let info = m.tensors().iter().find(|t| &t.name == name).unwrap();
        assert_eq!(&info.shape, shape);
        let meta = m.tensor_meta(name).unwrap();
        assert_eq!(meta.kind, StoredKind::Quantized);
        assert_eq!(meta.method.as_deref(), Some("rtn"));
        assert_eq!(meta.scheme(), Some(q.scheme));
        assert_eq!(info.dtype, meta.dtype);
        assert!(info.dtype.starts_with(&format!("int{}", q.scheme.bits)));
        // load_f32 dequantizes.
        let deq = m.load_f32(name).unwrap();
        assert_eq!(deq.len(), q.rows * q.cols);
    }
    assert_eq!(m.load_quantized("model.norm.weight").unwrap(), None);
    assert_eq!(m.load_f32("model.norm.weight").unwrap(), f16_round(norm));
    assert_eq!(
        m.load_f32("model.embed_tokens.weight").unwrap(),
        vec![1.0, -2.0, 0.5, 65504.0]
    );
    assert_eq!(m.tensor_meta("model.norm.weight").unwrap().dtype, "F16");

    let meta = m.metadata();
    assert_eq!(meta[0], ("general.name".into(), serde_json::json!("tiny")));
    assert_eq!(meta[1].1, serde_json::json!(["a", "b"]));
    assert_eq!(m.report()["mse"], 0.5);
    let comps = m.companion_files();
    assert_eq!(comps.len(), 1);
    assert!(comps[0].ends_with("tokenizer.json"));

    let view = ModelView::open(out).unwrap();
    assert_eq!(view.format_name(), "llmq");
    assert_eq!(view.arch().architecture, "llama");
}

#[test]
fn quantized_and_kept_tensors_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tiny-llmq");
    let (quantized, norm, path) = write_model(&out, u64::MAX);
    assert_eq!(path, out);
    assert!(out.join("model.safetensors").is_file());
    assert!(out.join("config.json").is_file());
    check_model(&out, &quantized, &norm);
    // Nothing but the output is left in the parent.
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(names.len(), 1);
}

#[test]
fn sharded_output_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sharded");
    let (quantized, norm, _) = write_model(&out, 1024);
    assert!(out.join("model.safetensors.index.json").is_file());
    assert!(!out.join("model.safetensors").exists());
    let shards = std::fs::read_dir(&out)
        .unwrap()
        .filter(|e| {
            let n = e.as_ref().unwrap().file_name();
            let n = n.to_string_lossy();
            n.starts_with("model-") && n.ends_with(".safetensors")
        })
        .count();
    assert!(shards > 1, "{shards} shards");
    check_model(&out, &quantized, &norm);
}

#[test]
fn dropped_writer_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("never");
    {
        let mut w = LlmqWriter::create(&out, false).unwrap();
        w.add_kept("a", &[2], &[1.0, 2.0]).unwrap();
    }
    assert!(!out.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn existing_output_needs_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("old.txt"), "old").unwrap();
    let err = LlmqWriter::create(&out, false).err().unwrap().to_string();
    assert!(err.contains("--overwrite"), "{err}");

    let mut w = LlmqWriter::create(&out, true).unwrap();
    w.add_kept("a", &[2], &[1.0, 2.0]).unwrap();
    w.finish(
        &arch(),
        Path::new("src"),
        Vec::new(),
        &[],
        serde_json::Value::Null,
    )
    .unwrap();
    assert!(!out.join("old.txt").exists());
    let m = LlmqModel::open(&out).unwrap();
    assert_eq!(m.load_f32("a").unwrap(), vec![1.0, 2.0]);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn kept_value_overflowing_f16_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = LlmqWriter::create(&dir.path().join("o"), false).unwrap();
    let err = w
        .add_kept("big.weight", &[2], &[1.0, 1e6])
        .unwrap_err()
        .to_string();
    assert!(err.contains("big.weight") && err.contains("f16"), "{err}");
}

#[test]
fn missing_component_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o");
    let (_, _, _) = write_model(&out, u64::MAX);
    // Drop a tensor from llmq.json's view of the weights by renaming it in the metadata.
    let meta_path = out.join("llmq.json");
    let text = std::fs::read_to_string(&meta_path).unwrap();
    let text = text.replace("model.norm.weight", "model.missing.weight");
    std::fs::write(&meta_path, text).unwrap();
    let err = LlmqModel::open(&out).err().unwrap().to_string();
    assert!(err.contains("model.missing.weight"), "{err}");
}

/// ggml blocks (what GPTQ onto a GGUF type stages) come back byte for byte
/// with their type, dequantize as llama.cpp's blocks do, and run through
/// the packed CPU matmul; a wrong byte count is refused with the name.
#[test]
fn ggml_blocks_round_trip() {
    use llmq_gpu::encoding::ggml::{self, GgmlTensor, GgmlType};
    use llmq_gpu::encoding::{EncodedTensor, Encoding};
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let (rows, cols) = (4, 512);
    let w: Vec<f32> = (0..rows * cols)
        .map(|_| rng.gen_range(-1.0f32..1.0))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("blocks");
    let mut writer = LlmqWriter::create(&out, false).unwrap();
    let mut written = Vec::new();
    for (i, ty) in [GgmlType::Q4K, GgmlType::Iq4Nl, GgmlType::Q6K]
        .into_iter()
        .enumerate()
    {
        let t = GgmlTensor {
            ty,
            rows,
            cols,
            data: ggml::quantize("w", ty, &w, cols).unwrap(),
        };
        let name = format!("model.layers.{i}.mlp.down_proj.weight");
        writer
            .add_encoded(
                &name,
                &[rows, cols],
                &EncodedTensor::Ggml(t.clone()),
                "gptq",
            )
            .unwrap();
        written.push((name, t));
    }
    let bad = GgmlTensor {
        ty: GgmlType::Q4K,
        rows,
        cols,
        data: vec![0; 7],
    };
    let e = writer
        .add_encoded(
            "bad.weight",
            &[rows, cols],
            &EncodedTensor::Ggml(bad),
            "gptq",
        )
        .unwrap_err();
    assert!(e.to_string().contains("bad.weight"), "{e}");
    writer
        .finish(
            &arch(),
            Path::new("/m.gguf"),
            Vec::new(),
            &[],
            serde_json::json!({}),
        )
        .unwrap();
    let m = LlmqModel::open(&out).unwrap();
    let x: Vec<f32> = (0..3 * cols).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
    for (name, t) in &written {
        let back = m.load_encoded(name).unwrap().unwrap();
        assert_eq!(back.encoding(), Encoding::Ggml(t.ty));
        assert_eq!(back, EncodedTensor::Ggml(t.clone()));
        let dense = ggml::dequantize(t.ty, &t.data, rows * cols).unwrap();
        assert_eq!(m.load_f32(name).unwrap(), dense);
        let y = back.matmul(&x, 3).unwrap();
        for (k, &v) in y.iter().enumerate() {
            let (tok, r) = (k / rows, k % rows);
            let want: f32 = (0..cols)
                .map(|c| x[tok * cols + c] * dense[r * cols + c])
                .sum();
            assert!(
                (v - want).abs() <= 1e-4 * (1.0 + want.abs()),
                "{name}: {v} vs {want}"
            );
        }
    }
}

//! The GGUF reader against llama.cpp's own Python reader (`gguf` on PyPI,
//! driven by tests/py/gguf_dump.py): every tensor of the real SmolLM2-135M
//! GGUF and a synthetic file with random blocks of every dequantizable type.
//!
//! Tolerance: values must agree to |rust − ref| ≤ 1e-6·max(1, |ref|)
//! (in practice they are bit-identical; the count of differing bits is printed).
//!
//! Needs: scripts/fetch-fixtures.sh (the model) and
//! `pip install -r scripts/requirements-test.txt` (gguf, numpy).

mod common;

use llmq_gpu::formats::gguf::GgufModel;
use llmq_gpu::model::TensorSource;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

const REL_TOL: f32 = 1e-6;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs gguf_dump.py on `gguf` (dequantizing only `names`, or every
/// tensor when empty) into a temp dir and returns (dir, index.json).
fn reference_dump(gguf: &Path, names: &[&str]) -> (tempfile::TempDir, Value) {
    let python = common::python_with_references();
    let dir = tempfile::tempdir().expect("temp dir");
    let out = Command::new(&python)
        .arg(repo().join("tests/py/gguf_dump.py"))
        .arg(gguf)
        .arg(dir.path())
        .args(names)
        .output()
        .expect("run gguf_dump.py");
    assert!(
        out.status.success(),
        "gguf_dump.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let index = std::fs::read(dir.path().join("index.json")).expect("index.json");
    let index = serde_json::from_slice(&index).expect("index.json is JSON");
    (dir, index)
}

/// Compares every tensor (every one dumped); returns (tensors compared,
/// values not bit-identical).
fn compare_tensors(m: &GgufModel, dir: &Path, index: &Value) -> (usize, usize) {
    let refs = index["tensors"].as_array().expect("tensors");
    assert_eq!(refs.len(), m.tensors().len(), "tensor count");
    let (mut inexact, mut compared) = (0, 0);
    for (r, t) in refs.iter().zip(m.tensors()) {
        let name = r["name"].as_str().unwrap();
        assert_eq!(t.name, name, "tensor order");
        let shape: Vec<usize> = serde_json::from_value(r["shape"].clone()).unwrap();
        assert_eq!(t.shape, shape, "{name} shape");
        assert_eq!(t.dtype, r["type"].as_str().unwrap(), "{name} type");
        let Some(file) = r["file"].as_str() else {
            continue;
        };
        compared += 1;
        let bytes = std::fs::read(dir.join(file)).unwrap();
        let want: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let got = m.load_f32(name).unwrap();
        assert_eq!(got.len(), want.len(), "{name} length");
        for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
            if g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()) {
                continue;
            }
            inexact += 1;
            assert!(
                (g - w).abs() <= REL_TOL * w.abs().max(1.0),
                "{name}[{i}] ({}): got {g}, gguf-py {w}",
                t.dtype
            );
        }
    }
    (compared, inexact)
}

#[test]
fn smollm2_matches_gguf_py() {
    let path = common::smollm2_gguf();
    let m = GgufModel::open(&path).unwrap();
    let (dir, index) = reference_dump(&path, &[]);

    // Metadata: every key, full values (tokenizer included).
    let want = index["metadata"].as_object().expect("metadata");
    let got: serde_json::Map<String, Value> = m.metadata().into_iter().collect();
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "metadata keys"
    );
    for (k, v) in want {
        assert_eq!(&got[k], v, "metadata '{k}'");
    }
    assert_eq!(m.version() as u64, index["version"].as_u64().unwrap());

    let a = m.arch();
    assert_eq!(a.architecture, "llama");
    assert_eq!(
        (
            a.hidden_size,
            a.intermediate_size,
            a.num_layers,
            a.num_heads,
            a.num_kv_heads
        ),
        (576, 1536, 30, 9, 3)
    );
    assert_eq!((a.vocab_size, a.context_length), (49152, 8192));
    assert_eq!(a.rope_theta, 100000.0);
    assert_eq!(a.rms_norm_eps, 1e-5);
    assert!(a.tied_embeddings);

    let (n, inexact) = compare_tensors(&m, dir.path(), &index);
    let mut types: Vec<&str> = m.tensors().iter().map(|t| t.dtype.as_str()).collect();
    types.sort();
    types.dedup();
    assert_eq!(types, ["F32", "Q4_1", "Q8_0"]);
    eprintln!("SmolLM2: {n} tensors ({types:?}) match gguf-py; {inexact} values not bit-identical");
}

/// (ggml type id, block elements, block bytes, offsets of f16 fields).
const SYNTHETIC: &[(&str, u32, usize, usize, &[usize])] = &[
    ("F16", 1, 1, 2, &[0]),
    ("BF16", 30, 1, 2, &[]),
    ("Q8_0", 8, 32, 34, &[0]),
    ("Q4_0", 2, 32, 18, &[0]),
    ("Q4_1", 3, 32, 20, &[0, 2]),
    ("Q5_0", 6, 32, 22, &[0]),
    ("Q5_1", 7, 32, 24, &[0, 2]),
    ("Q4_K", 12, 256, 144, &[0, 2]),
    ("Q5_K", 13, 256, 176, &[0, 2]),
    ("Q6_K", 14, 256, 210, &[208]),
];

fn gguf_string(b: &mut Vec<u8>, s: &str) {
    b.extend((s.len() as u64).to_le_bytes());
    b.extend(s.as_bytes());
}

/// A GGUF with one [4, 512] tensor per type, blocks of random bytes whose
/// f16 scale fields hold finite random values.
fn synthetic_gguf(path: &Path) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let (rows, cols) = (4usize, 512usize);
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend((SYNTHETIC.len() as u64).to_le_bytes());
    b.extend(1u64.to_le_bytes());
    gguf_string(&mut b, "general.architecture");
    b.extend(8u32.to_le_bytes());
    gguf_string(&mut b, "synthetic");
    let mut data = Vec::new();
    for &(name, ty, blk, size, halves) in SYNTHETIC {
        gguf_string(&mut b, name);
        b.extend(2u32.to_le_bytes());
        b.extend((cols as u64).to_le_bytes());
        b.extend((rows as u64).to_le_bytes());
        b.extend(ty.to_le_bytes());
        b.extend((data.len() as u64).to_le_bytes());
        for _ in 0..rows * cols / blk {
            let mut block: Vec<u8> = (0..size).map(|_| rng.gen()).collect();
            if name == "BF16" {
                let v = half::bf16::from_f32(rng.gen_range(-4.0..4.0));
                block.copy_from_slice(&v.to_le_bytes());
            }
            for &o in halves {
                let v = half::f16::from_f32(rng.gen_range(-2.0..2.0));
                block[o..o + 2].copy_from_slice(&v.to_le_bytes());
            }
            data.extend(block);
        }
        data.resize(data.len().div_ceil(32) * 32, 0);
    }
    b.resize(b.len().div_ceil(32) * 32, 0);
    b.extend(data);
    std::fs::write(path, b).expect("write synthetic GGUF");
}

#[test]
fn synthetic_blocks_of_every_type_match_gguf_py() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("synthetic.gguf");
    synthetic_gguf(&path);
    let m = GgufModel::open(&path).unwrap();
    let (out, index) = reference_dump(&path, &[]);
    let (n, inexact) = compare_tensors(&m, out.path(), &index);
    assert_eq!(n, SYNTHETIC.len());
    eprintln!("synthetic: {n} types match gguf-py; {inexact} values not bit-identical");
}

/// Our GGUF writer under every preset it writes, checked by gguf-py
/// (whose dequantization of every type the synthetic test checks):
/// tests/py/gguf_requantize_ref.py requantizes the source with gguf-py's
/// numpy ports of llama.cpp's reference quantizers and must find our
/// bytes in every tensor (copied tensors: the source's bytes); gguf-py
/// reads every metadata key back (the source's, plus the ones we set)
/// and dequantizes tensors of three types to what our reader gives.
#[test]
fn written_gguf_matches_gguf_py_for_every_preset() {
    use llmq_gpu::formats::gguf::export::{export, GgufExport, GgufLayout};
    use llmq_gpu::formats::gguf::presets::Preset;
    let src_path = common::smollm2_gguf();
    let src = GgufModel::open(&src_path).unwrap();
    let python = common::python_with_references();
    let dir = tempfile::tempdir().unwrap();
    // (file, preset, rules): the presets, and one file holding every
    // k-quant (SmolLM2's 576-wide rows take the fallbacks; its 1536-wide
    // down projections take 256-blocks).
    let every_k = [
        "blk\\.0\\.ffn_down=Q2_K",
        "blk\\.1\\.ffn_down=Q3_K",
        "blk\\.2\\.ffn_down=Q4_K",
        "blk\\.3\\.ffn_down=Q5_K",
        "blk\\.4\\.ffn_down=Q6_K",
    ];
    let mut files: Vec<(&str, &str, &[&str])> = [
        "F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K_M", "IQ4_NL",
    ]
    .iter()
    .map(|p| (*p, *p, &[][..]))
    .collect();
    files.push(("every-k-quant", "Q8_0", &every_k));
    let presets: Vec<&str> = files.iter().map(|f| f.0).collect();
    let mut written = Vec::new();
    for (file, preset, rules) in &files {
        let out = dir.path().join(format!("{file}.gguf"));
        let opts = GgufExport {
            preset: Preset::parse(preset).unwrap(),
            rules: rules.iter().map(|r| r.parse().unwrap()).collect(),
            overwrite: false,
        };
        let report = export(&GgufLayout::of_gguf(&src), &out, &opts, &mut |_, _, _| {}).unwrap();
        written.push((*file, out, opts, report));
    }
    let run = Command::new(&python)
        .arg(repo().join("tests/py/gguf_requantize_ref.py"))
        .arg(&src_path)
        .args(written.iter().map(|w| &w.1))
        .output()
        .expect("run gguf_requantize_ref.py");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let lines = String::from_utf8(run.stdout).unwrap();
    assert_eq!(lines.lines().count(), presets.len());
    for ((preset, out, opts, report), line) in written.iter().zip(lines.lines()) {
        let r: Value = serde_json::from_str(line).unwrap();
        assert_eq!(r["mismatches"], serde_json::json!([]), "{preset}: {r}");
        // Types gguf-py only dequantizes: its values equal ours exactly.
        let fingerprints = r["fingerprints"].as_object().unwrap();
        let m = GgufModel::open(out).unwrap();
        for (name, want) in fingerprints {
            let got = common::fingerprint(&m.load_f32(name).unwrap());
            assert_eq!(&serde_json::json!(got), want, "{preset}: {name}");
        }
        let k_types: std::collections::BTreeSet<&str> = report
            .tensors
            .iter()
            .filter(|t| fingerprints.contains_key(&t.name))
            .map(|t| t.to)
            .collect();
        match *preset {
            "every-k-quant" => assert_eq!(
                k_types.into_iter().collect::<Vec<_>>(),
                ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
            ),
            "Q4_K_M" => assert_eq!(k_types.into_iter().collect::<Vec<_>>(), ["Q4_K", "Q6_K"]),
            "IQ4_NL" => assert!(k_types.contains("IQ4_NL"), "{k_types:?}"),
            _ => {}
        }
        assert_eq!(r["tensors"].as_u64(), Some(272), "{preset}");
        assert_eq!(
            r["metadata_only_in_source"],
            serde_json::json!([]),
            "{preset}"
        );
        // The tied head's 576-wide rows take Q8_0 under quantized presets.
        let head = report
            .tensors
            .iter()
            .find(|t| t.name == "token_embd.weight")
            .unwrap();
        let head_want = match *preset {
            "F32" | "F16" | "BF16" => *preset,
            _ => "Q8_0",
        };
        assert_eq!(head.to, head_want, "{preset}");
        eprintln!(
            "{preset}: {} tensors as gguf-py requantizes them, {:.3} bits/weight",
            r["tensors"], report.bits_per_weight
        );
        // Read back whole by gguf-py (its dump of the metadata takes
        // seconds): two files cover the header paths and three types.
        if !matches!(*preset, "Q4_0" | "BF16") {
            continue;
        }
        let m = GgufModel::open(out).unwrap();
        let names = [
            "blk.0.attn_q.weight",
            "blk.3.ffn_down.weight",
            "blk.0.attn_norm.weight",
        ];
        let (dump, index) = reference_dump(out, &names);
        let (n, inexact) = compare_tensors(&m, dump.path(), &index);
        assert_eq!(n, names.len());
        let want = index["metadata"].as_object().unwrap();
        let got: serde_json::Map<String, Value> = m.metadata().into_iter().collect();
        assert_eq!(&got, want, "{preset} metadata");
        assert_eq!(got["general.file_type"], opts.preset.file_type());
        assert_eq!(got["general.quantization_version"], 2);
        let srcmd: serde_json::Map<String, Value> = src.metadata().into_iter().collect();
        for (k, v) in &srcmd {
            if !matches!(
                k.as_str(),
                "general.file_type" | "general.quantization_version"
            ) {
                assert_eq!(&got[k], v, "{preset}: '{k}' carried over");
            }
        }
        eprintln!("{preset}: {n} tensors read back by gguf-py, {inexact} values not bit-identical");
    }
}

//! SentencePiece vocabularies from GGUF metadata (llama.cpp's "llama"
//! tokenizer model: Llama 1/2, Mistral). No such model is among the
//! fixtures, so tests/py/spm_ref.py builds a vocabulary with scores and byte
//! tokens from an Austen novel and tokenizes samples with its own plain
//! re-implementation of llama.cpp's SPM algorithm; the ids must be identical.

mod common;

use llmq_gpu::model::Tokenizer;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn samples() -> Vec<String> {
    let text = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cache/austen/persuasion.txt"),
    )
    .expect("Austen fixture missing: run scripts/fetch-fixtures.sh");
    let mut s: Vec<String> = text
        .split("\n\n")
        .filter(|p| p.len() > 40)
        .step_by(97)
        .take(60)
        .map(|p| p.replace('\n', " "))
        .collect();
    s.extend(
        [
            "Hello world",
            "  two leading spaces and  double  gaps",
            "naïve café — “quoted” ünïcödé ✓ 😀",
            "numbers 12345 and tabs\tinside",
            "x",
        ]
        .map(String::from),
    );
    s
}

/// (metadata, expected ids per sample)
fn reference(dir: &Path, samples: &[String]) -> (HashMap<String, Value>, Vec<Vec<u32>>) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let train = root.join(".cache/austen/persuasion.txt");
    let sample_file = dir.join("samples.json");
    std::fs::write(&sample_file, serde_json::to_string(samples).unwrap()).unwrap();
    let out = dir.join("spm.json");
    let o = Command::new(common::python_with_references())
        .arg(root.join("tests/py/spm_ref.py"))
        .args([&train, &sample_file, &out])
        .output()
        .expect("run spm_ref.py");
    assert!(
        o.status.success(),
        "spm_ref.py: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let r: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let meta: HashMap<String, Value> = [
        ("tokenizer.ggml.model", json!("llama")),
        ("tokenizer.ggml.tokens", r["tokens"].clone()),
        ("tokenizer.ggml.scores", r["scores"].clone()),
        ("tokenizer.ggml.token_type", r["types"].clone()),
        ("tokenizer.ggml.bos_token_id", json!(1)),
        ("tokenizer.ggml.eos_token_id", json!(2)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let ids = r["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            a.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect()
        })
        .collect();
    (meta, ids)
}

#[test]
fn sentencepiece_matches_llama_cpp_algorithm_and_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let samples = samples();
    let (meta, want) = reference(dir.path(), &samples);
    let tok = Tokenizer::from_gguf_metadata(Path::new("spm.gguf"), &meta).expect("build");
    assert!(tok.add_bos_default(), "SentencePiece models default to BOS");
    assert_eq!((tok.bos_id(), tok.eos_id()), (Some(1), Some(2)));
    let mut total = 0;
    for (s, want) in samples.iter().zip(&want) {
        let ids = tok.encode(s, false).expect("encode");
        assert_eq!(&ids, want, "ids differ for {s:?}");
        total += ids.len();
        assert_eq!(tok.decode(&ids).expect("decode"), *s, "round trip of {s:?}");
    }
    eprintln!("{} samples, {total} tokens identical", samples.len());
    let with_bos = tok.encode("Hello", true).expect("encode");
    assert_eq!(with_bos[0], 1);

    // Written as a Hugging Face tokenizer.json and turned back into GGUF
    // keys (`convert --to gguf`): scores rebuilt from the merge ranks give
    // llama.cpp's ids again.
    let (json, cfg) = tok.hf_files(None).expect("hf files");
    let (tj, tc) = (
        dir.path().join("tokenizer.json"),
        dir.path().join("tokenizer_config.json"),
    );
    std::fs::write(&tj, json).unwrap();
    std::fs::write(&tc, cfg).unwrap();
    let n = tok.vocab_size();
    let keys = llmq_gpu::formats::gguf::tokenizer_keys::from_hf_files(&tj, Some(&tc), None, n)
        .expect("GGUF keys from tokenizer.json");
    let get = |k: &str| {
        keys.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(get("tokenizer.ggml.model").unwrap().as_str(), Some("llama"));
    assert!(get("tokenizer.ggml.scores").is_some() && get("tokenizer.ggml.merges").is_none());
    let meta2: HashMap<String, Value> =
        keys.iter().map(|(k, v)| (k.clone(), v.to_json())).collect();
    assert_eq!(
        meta2["tokenizer.ggml.tokens"],
        meta["tokenizer.ggml.tokens"]
    );
    assert_eq!(
        meta2["tokenizer.ggml.token_type"],
        meta["tokenizer.ggml.token_type"]
    );
    assert_eq!(meta2["tokenizer.ggml.bos_token_id"], json!(1));
    let back = Tokenizer::from_gguf_metadata(Path::new("back.gguf"), &meta2).expect("rebuild");
    for (s, want) in samples.iter().zip(&want) {
        assert_eq!(
            &back.encode(s, false).unwrap(),
            want,
            "after tokenizer.json: {s:?}"
        );
    }
}

#[test]
fn sentencepiece_without_scores_is_a_clear_error() {
    let meta: HashMap<String, Value> = [
        ("tokenizer.ggml.model", json!("llama")),
        ("tokenizer.ggml.tokens", json!(["<unk>", "a"])),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let e = Tokenizer::from_gguf_metadata(Path::new("x.gguf"), &meta).expect_err("no scores");
    assert!(e.to_string().contains("tokenizer.ggml.scores"), "{e}");
}

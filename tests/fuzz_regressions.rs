//! Inputs the fuzzer (tests/fuzz_readers.rs) found crashing a reader, each
//! now an error that names the file.

mod common;

use llmq_gpu::model::tokenizer::Tokenizer;
use llmq_gpu::ModelView;
use serde_json::{json, Value};
use std::path::Path;

/// A byte-free BPE tokenizer.json over `vocab` with `merges`, edited by `edit`.
fn bpe_json(edit: impl FnOnce(&mut Value)) -> String {
    let mut t = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": null, "post_processor": null, "decoder": null,
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": [["a", "b"]]}
    });
    edit(&mut t);
    t.to_string()
}

/// `tokenizers` itself panics on `json` (so the case tests the guard), and
/// llmq-gpu's reader returns an error naming the file instead.
fn check_contained(json: &str) {
    let direct = std::panic::catch_unwind(|| {
        <tokenizers::Tokenizer as std::str::FromStr>::from_str(json).map(|_| ())
    });
    assert!(
        direct.is_err(),
        "the tokenizers crate no longer panics here; keep the case anyway"
    );
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("tokenizer.json");
    std::fs::write(&p, json).unwrap();
    let err = Tokenizer::from_hf_files(dir.path(), &p, None, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("tokenizer.json"), "{err}");
    assert!(err.contains("tokenizers library failed"), "{err}");
}

#[test]
fn bpe_prefix_longer_than_a_merge_part_is_an_error() {
    // tokenizers 0.22 slices `b[prefix_len..]` for every merge.
    check_contained(&bpe_json(|t| {
        t["model"]["continuing_subword_prefix"] = json!("################");
    }));
}

#[test]
fn malformed_decoder_is_an_error() {
    // The decoder's helper `expect`s its own deserialization: a stray
    // character where the decoder's value starts (found by the fuzzer).
    let json = bpe_json(|_| {}).replace("\"decoder\":null", "\"decoder\":\u{2de}\u{16}null");
    assert!(json.contains('\u{2de}'));
    check_contained(&json);
}

/// The tiny model quantized to an llmq folder, with `edit` applied to its `llmq.json`.
fn llmq_with(dir: &Path, edit: impl FnOnce(&mut Value)) -> std::path::PathBuf {
    let model = common::tiny(dir, true);
    let out = dir.join("q");
    let o = common::llmq(&[
        "quantize",
        "--model",
        model.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--bits",
        "4",
        "--group-size",
        "32",
        "--device",
        "cpu",
    ]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let meta = out.join("llmq.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&meta, v.to_string()).unwrap();
    out
}

#[test]
fn llmq_shape_that_overflows_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let name = "model.layers.0.self_attn.k_proj.weight";
    let out = llmq_with(dir.path(), |v| {
        v["tensors"][name]["shape"] = json!([32u64, 1u64 << 63]);
    });
    let err = ModelView::open(&out).err().expect("refused").to_string();
    assert!(err.contains(name) && err.contains("overflows"), "{err}");
}

#[test]
fn vq_bits_that_overflow_the_index_width_are_an_error() {
    // Found by the long fuzz run: 2 dimensions at 2³¹ bits overflowed `dim · bits`.
    assert!(llmq_gpu::encoding::VqScheme::new(2, 1 << 31, 256, 8).is_err());
    assert!(llmq_gpu::encoding::VqScheme::new(4, u32::MAX, 256, 8).is_err());
}

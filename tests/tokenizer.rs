//! Tokenizer built from SmolLM2's GGUF metadata: round trips on real text,
//! SmolLM2's digit splitting and special tokens, and ids identical to Python's
//! `tokenizers` package built independently from the same vocabulary.

mod common;

use llmq_gpu::model::{ModelView, Tokenizer};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

fn tokenizer() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let path = common::smollm2_gguf();
        let model =
            ModelView::open(&path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
        Tokenizer::from_model(&model).unwrap_or_else(|e| panic!("tokenizer: {e}"))
    })
}

fn austen(name: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(".cache/austen")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| {
        panic!(
            "Austen fixture {} missing ({e}): run scripts/fetch-fixtures.sh",
            p.display()
        )
    })
}

/// The longest prefix of `s` of at most `n` bytes that ends on a char boundary.
fn prefix(s: &str, n: usize) -> &str {
    let mut end = n.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[test]
fn smollm2_settings() {
    let t = tokenizer();
    assert_eq!(t.vocab_size(), 49152);
    assert_eq!(t.bos_id(), Some(1));
    assert_eq!(t.eos_id(), Some(2));
    assert!(
        !t.add_bos_default(),
        "SmolLM2's GGUF says add_bos_token = false"
    );
    assert_eq!(t.token_str(1).as_deref(), Some("<|im_start|>"));
    assert!(t.token_str(49151).is_some());
    assert_eq!(t.token_str(49152), None);
}

#[test]
fn round_trip_emma_chunks() {
    let t = tokenizer();
    let emma = austen("emma.txt");
    let text = prefix(&emma, 200_000);
    // Chapter-sized pieces, cut at line ends so each is ordinary prose.
    let mut rest = text;
    let mut n = 0;
    while !rest.is_empty() {
        let cut = prefix(rest, 20_000);
        let end = if cut.len() < rest.len() {
            cut.rfind('\n').map_or(cut.len(), |i| i + 1)
        } else {
            cut.len()
        };
        let chunk = &rest[..end];
        let ids = t.encode(chunk, false).expect("encode");
        let back = t.decode(&ids).expect("decode");
        assert!(back == chunk, "round trip differs in chunk {n}");
        rest = &rest[end..];
        n += 1;
    }
    assert!(n >= 10);
}

#[test]
fn round_trip_tricky_strings() {
    let t = tokenizer();
    for s in [
        "12345",
        "naïve café — “quotes”",
        "a  b   c\t\td    \n\n\n  e ",
        "\n",
        "   ",
        "",
        "<|im_start|>user\nHi<|im_end|>",
        "emoji 🦀🚀 and CJK 漢字かな",
        "x=3.14159; y=-2e10, ½ ⅔ ² ٣",
    ] {
        let ids = t.encode(s, false).expect("encode");
        assert_eq!(t.decode(&ids).expect("decode"), s, "ids {ids:?}");
    }
}

#[test]
fn digits_split_individually() {
    let t = tokenizer();
    let ids = t.encode("2024", false).expect("encode");
    let strs: Vec<String> = ids.iter().filter_map(|&i| t.token_str(i)).collect();
    assert_eq!(strs, ["2", "0", "2", "4"], "ids {ids:?}");
    // SmolLM2's vocabulary holds "0".."9" at ids 32..41, in order.
    assert_eq!(
        t.encode("0123456789", false).expect("encode"),
        (32..42).collect::<Vec<u32>>()
    );
}

#[test]
fn special_tokens_and_bos() {
    let t = tokenizer();
    assert_eq!(t.encode("<|im_start|>", false).expect("encode"), [1]);
    let ids = t
        .encode("<|im_start|>user\nHi<|im_end|>", false)
        .expect("encode");
    assert_eq!(ids.first(), Some(&1));
    assert_eq!(ids.last(), Some(&2));
    let with_bos = t.encode("Hi", true).expect("encode");
    assert_eq!(with_bos[0], 1);
    assert_eq!(&with_bos[1..], t.encode("Hi", false).expect("encode"));
}

#[test]
fn decode_rejects_out_of_range_id() {
    let err = tokenizer().decode(&[5, 1_000_000]).unwrap_err();
    assert!(err.to_string().contains("1000000"), "{err}");
}

fn meta_with(pairs: &[(&str, Value)]) -> HashMap<String, Value> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

#[test]
fn missing_or_unknown_metadata_errors() {
    let p = Path::new("/models/x.gguf");
    let err = Tokenizer::from_gguf_metadata(p, &HashMap::new()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("/models/x.gguf") && msg.contains("tokenizer.ggml.model"),
        "{msg}"
    );

    let err =
        Tokenizer::from_gguf_metadata(p, &meta_with(&[("tokenizer.ggml.model", "t5".into())]))
            .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("unsupported") && msg.contains("'t5'"), "{msg}");

    let err =
        Tokenizer::from_gguf_metadata(p, &meta_with(&[("tokenizer.ggml.model", "gpt2".into())]))
            .unwrap_err();
    assert!(err.to_string().contains("tokenizer.ggml.tokens"), "{err}");

    let err = Tokenizer::from_gguf_metadata(
        p,
        &meta_with(&[
            ("tokenizer.ggml.model", "gpt2".into()),
            ("tokenizer.ggml.pre", "mystery".into()),
            ("tokenizer.ggml.tokens", serde_json::json!(["a", "b", "ab"])),
            ("tokenizer.ggml.merges", serde_json::json!(["a b"])),
        ]),
    )
    .unwrap_err();
    assert!(err.to_string().contains("'mystery'"), "{err}");
}

/// A small vocabulary built by hand: merges apply and the default GPT-2
/// pre-tokenizer keeps the leading space with the word.
#[test]
fn hand_built_vocab() {
    let p = Path::new("toy.gguf");
    let t = Tokenizer::from_gguf_metadata(
        p,
        &meta_with(&[
            ("tokenizer.ggml.model", "gpt2".into()),
            (
                "tokenizer.ggml.tokens",
                serde_json::json!(["<s>", "a", "b", "Ġ", "ab", "Ġab"]),
            ),
            (
                "tokenizer.ggml.token_type",
                serde_json::json!([3, 1, 1, 1, 1, 1]),
            ),
            ("tokenizer.ggml.merges", serde_json::json!(["a b", "Ġ ab"])),
            ("tokenizer.ggml.bos_token_id", 0.into()),
        ]),
    )
    .expect("toy tokenizer");
    assert_eq!(t.encode("ab ab<s>", true).expect("encode"), [0, 4, 5, 0]);
    assert_eq!(t.decode(&[4, 5, 0]).expect("decode"), "ab ab<s>");
    assert_eq!(t.eos_id(), None);
}

/// Identical ids to Python's `tokenizers`, built in Python from the GGUF's
/// vocabulary and merges (tests/py/tokenize_ref.py), on 20 KB of Persuasion.
#[test]
fn matches_python_tokenizers_on_persuasion() {
    let python = std::env::var("LLMQ_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&python)
        .args(["-c", "import gguf, tokenizers"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "python packages 'gguf' and 'tokenizers' needed: pip install -r scripts/requirements-test.txt"
    );
    let persuasion = austen("persuasion.txt");
    // Start inside the novel and end with chat markup, to cover specials too.
    let text = format!(
        "{}\n<|im_start|>assistant\n2024: ok<|im_end|>",
        prefix(&persuasion, 20_000)
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let text_path = dir.path().join("text.txt");
    std::fs::write(&text_path, &text).expect("write text");
    let out = Command::new(&python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/tokenize_ref.py"))
        .arg(common::smollm2_gguf())
        .arg(&text_path)
        .output()
        .expect("running tokenize_ref.py");
    assert!(
        out.status.success(),
        "tokenize_ref.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want: Vec<u32> = serde_json::from_slice(&out.stdout).expect("reference ids JSON");
    let got = tokenizer().encode(&text, false).expect("encode");
    assert_eq!(got.len(), want.len(), "token counts differ");
    if let Some(i) = got.iter().zip(&want).position(|(a, b)| a != b) {
        panic!(
            "first difference at token {i}: {} vs python {}",
            got[i], want[i]
        );
    }
    eprintln!("{} tokens identical to python tokenizers", got.len());
}

#[test]
fn tokenize_all_of_emma_timed() {
    let t = tokenizer();
    let emma = austen("emma.txt");
    let start = Instant::now();
    let ids = t.encode(&emma, false).expect("encode");
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "Emma: {} bytes -> {} tokens in {secs:.3} s ({:.2} MB/s)",
        emma.len(),
        ids.len(),
        emma.len() as f64 / secs / 1e6
    );
    assert!(ids.len() > emma.len() / 8);
}

/// A Hugging Face `tokenizer.json` with `tokenizer_config.json`: BOS/EOS by
/// name, and the config's add_bos_token flag.
#[test]
fn hf_tokenizer_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("tokenizer.json");
    let cfg = dir.path().join("tokenizer_config.json");
    std::fs::write(
        &json,
        serde_json::json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": [
                {"id": 0, "content": "<s>", "single_word": false, "lstrip": false,
                 "rstrip": false, "normalized": false, "special": true},
                {"id": 1, "content": "</s>", "single_word": false, "lstrip": false,
                 "rstrip": false, "normalized": false, "special": true}
            ],
            "normalizer": null,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false,
                              "trim_offsets": true, "use_regex": true},
            "post_processor": null,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true,
                        "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null,
                      "continuing_subword_prefix": null, "end_of_word_suffix": null,
                      "fuse_unk": false, "byte_fallback": false,
                      "vocab": {"<s>": 0, "</s>": 1, "a": 2, "b": 3, "Ġ": 4, "ab": 5, "Ġab": 6},
                      "merges": ["a b", "Ġ ab"]}
        })
        .to_string(),
    )
    .expect("write tokenizer.json");
    std::fs::write(
        &cfg,
        r#"{"bos_token": {"content": "<s>"}, "eos_token": "</s>", "add_bos_token": true}"#,
    )
    .expect("write tokenizer_config.json");
    let t = Tokenizer::from_hf_files(dir.path(), &json, Some(&cfg), None).expect("load");
    assert_eq!(
        (t.bos_id(), t.eos_id(), t.add_bos_default()),
        (Some(0), Some(1), true)
    );
    let ids = t.encode("ab ab</s>", true).expect("encode");
    assert_eq!(ids, [0, 5, 6, 1]);
    assert_eq!(t.decode(&ids).expect("decode"), "<s>ab ab</s>");

    let err = Tokenizer::from_hf_files(dir.path(), &dir.path().join("nope.json"), None, None)
        .unwrap_err();
    assert!(err.to_string().contains("nope.json"), "{err}");
}

/// Every supported `tokenizer.ggml.pre` builds (the Llama 3 split regex must
/// compile under the pure-Rust regex backend) and round-trips byte-level text.
#[test]
fn supported_pre_tokenizers_build() {
    // SmolLM2's vocabulary holds all 256 byte symbols, so any text is encodable.
    let smol = tokenizer();
    let vocab: Vec<String> = (0..smol.vocab_size() as u32)
        .filter_map(|i| smol.token_str(i))
        .collect();
    for pre in [
        "default",
        "gpt2",
        "smollm",
        "starcoder",
        "refact",
        "llama-bpe",
    ] {
        let t = Tokenizer::from_gguf_metadata(
            Path::new("x"),
            &meta_with(&[
                ("tokenizer.ggml.model", "gpt2".into()),
                ("tokenizer.ggml.pre", pre.into()),
                ("tokenizer.ggml.tokens", serde_json::json!(vocab)),
                ("tokenizer.ggml.merges", serde_json::json!(["Ġ t", "i n"])),
            ]),
        )
        .unwrap_or_else(|e| panic!("pre '{pre}': {e}"));
        let s = "It's 2024!\n\n  Naïve 🦀 text\tends  ";
        let ids = t.encode(s, false).expect("encode");
        assert_eq!(t.decode(&ids).expect("decode"), s, "pre '{pre}'");
    }
}

//! `llmq-gpu convert`: the SmolLM2 GGUF as a Hugging Face folder runs to
//! the same perplexity here, and Python's `tokenizers` reads its
//! tokenizer.json to the same ids as a tokenizer built independently from
//! the GGUF (tests/py/tokenize_ref.py).

mod common;

use common::{llmq, stderr};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn persuasion() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cache/austen/persuasion.txt")
}

fn ppl(model: &Path) -> f64 {
    let text = persuasion();
    let o = llmq(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--text",
        text.to_str().unwrap(),
        "--ctx",
        "256",
        "--chunks",
        "2",
        "--device",
        "cpu",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    v["ppl"].as_f64().unwrap()
}

#[test]
fn gguf_to_hugging_face_runs_and_tokenizes_the_same() {
    let gguf = common::smollm2_gguf();
    let dir = tempfile::tempdir().unwrap();
    let hf = dir.path().join("hf");
    let o = llmq(&[
        "convert",
        "--model",
        gguf.to_str().unwrap(),
        "--out",
        hf.to_str().unwrap(),
        "--dtype",
        "f32",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(hf.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["architectures"][0], "LlamaForCausalLM");
    assert_eq!(cfg["num_key_value_heads"], 3);
    assert_eq!(cfg["tie_word_embeddings"], true);
    // f32 holds every dequantized GGUF value exactly, and q/k are
    // un-permuted (a wrong permutation would wreck the perplexity).
    let (a, b) = (ppl(&gguf), ppl(&hf));
    assert!((a - b).abs() <= 1e-6 * a, "GGUF {a} vs Hugging Face {b}");
    eprintln!("perplexity GGUF {a:.6}, converted folder {b:.6}");

    // tokenizer.json as Python's tokenizers reads it, against ids built in
    // Python from the GGUF vocabulary and merges.
    let python = common::python_with_references();
    let text_path = dir.path().join("text.txt");
    let novel = std::fs::read_to_string(persuasion()).unwrap();
    let cut = (0..=20_000)
        .rev()
        .find(|&i| novel.is_char_boundary(i))
        .unwrap();
    std::fs::write(
        &text_path,
        format!(
            "{}\n<|im_start|>assistant\n2024: ok<|im_end|>",
            &novel[..cut]
        ),
    )
    .unwrap();
    let script = "import json, sys\nfrom tokenizers import Tokenizer\n\
        t = Tokenizer.from_file(sys.argv[1])\n\
        print(json.dumps(t.encode(open(sys.argv[2]).read(), add_special_tokens=False).ids))";
    let ours = Command::new(&python)
        .args(["-c", script])
        .arg(hf.join("tokenizer.json"))
        .arg(&text_path)
        .output()
        .unwrap();
    assert!(ours.status.success(), "{}", stderr(&ours));
    let reference = Command::new(&python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/tokenize_ref.py"))
        .arg(&gguf)
        .arg(&text_path)
        .output()
        .unwrap();
    assert!(reference.status.success(), "{}", stderr(&reference));
    let got: Vec<u32> = serde_json::from_slice(&ours.stdout).unwrap();
    let want: Vec<u32> = serde_json::from_slice(&reference.stdout).unwrap();
    assert!(got.len() > 4000);
    assert_eq!(got, want);

    // An existing folder is kept without --overwrite; a non-GGUF source
    // is refused by name.
    let o = llmq(&[
        "convert",
        "--model",
        gguf.to_str().unwrap(),
        "--out",
        hf.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--overwrite"), "{}", stderr(&o));
    let o = llmq(&[
        "convert",
        "--model",
        text_path.to_str().unwrap(),
        "--out",
        dir.path().join("x").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("is not one"), "{}", stderr(&o));
    let mut left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["hf", "text.txt"]);
}

//! `llmq-gpu eval` on the real SmolLM2-135M against an independent
//! perplexity (tests/py/perplexity.py: Python `tokenizers` built from the
//! GGUF vocabulary, the float64 numpy forward of llama_forward.py, the same
//! llama.cpp windows and second-half scoring). They must agree within 0.5%.
//!
//! Small setting to stay quick in test builds: 3 windows of 128 tokens of
//! Persuasion. The full-size check (ctx 512, 20 windows) is in the README.
//!
//! Needs: scripts/fetch-fixtures.sh (model, texts) and
//! `pip install -r scripts/requirements-test.txt` (gguf, numpy, tokenizers).

mod common;

use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

const CTX: &str = "128";
const CHUNKS: &str = "3";
const REL_TOL: f64 = 0.005;

#[test]
fn smollm2_perplexity_matches_independent_python() {
    let model = common::smollm2_gguf();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let text = root.join(".cache/austen/persuasion.txt");
    assert!(
        text.is_file(),
        "{} missing: run scripts/fetch-fixtures.sh",
        text.display()
    );
    // The Python side takes longer: start it first and run ours meanwhile.
    let python = Command::new(common::python_with_references())
        .arg(root.join("tests/py/perplexity.py"))
        .args([model.as_os_str(), text.as_os_str()])
        .args([CTX, CHUNKS])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start perplexity.py");
    let ours = Command::new(env!("CARGO_BIN_EXE_llmq-gpu"))
        .args([
            "eval", "--device", "cpu", "--json", "--ctx", CTX, "--chunks", CHUNKS,
        ])
        .arg("--model")
        .arg(&model)
        .arg("--text")
        .arg(&text)
        .output()
        .expect("run llmq-gpu eval");
    assert!(
        ours.status.success(),
        "eval failed: {}",
        String::from_utf8_lossy(&ours.stderr)
    );
    let py = python.wait_with_output().expect("perplexity.py");
    assert!(
        py.status.success(),
        "perplexity.py failed: {}",
        String::from_utf8_lossy(&py.stderr)
    );
    let r: Value = serde_json::from_slice(&ours.stdout).expect("eval JSON");
    let p: Value = serde_json::from_slice(&py.stdout).expect("perplexity.py JSON");
    eprintln!("rust:   {r}");
    eprintln!("python: {p}");
    assert_eq!(r["text_tokens"], p["text_tokens"], "same tokenization");
    assert_eq!(r["tokens_scored"], p["scored"], "same scored positions");
    assert_eq!(r["bos"], p["bos"], "same BOS rule");
    let (a, b) = (r["ppl"].as_f64().unwrap(), p["ppl"].as_f64().unwrap());
    let rel = (a - b).abs() / b;
    eprintln!(
        "SmolLM2 ctx {CTX}, {CHUNKS} chunks of Persuasion: PPL rust {a:.5}, python {b:.5}, relative difference {rel:.2e}"
    );
    assert!(rel <= REL_TOL, "PPL {a} vs {b}: {rel:.4} > {REL_TOL}");
    let (ea, eb) = (
        r["ppl_stderr"].as_f64().unwrap(),
        p["ppl_stderr"].as_f64().unwrap(),
    );
    assert!((ea - eb).abs() <= REL_TOL * eb, "stderr {ea} vs {eb}");
}

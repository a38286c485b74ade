//! The `llmq-gpu` binary end to end on tiny synthetic models: a good run
//! writes a model that reads back, bad input exits non-zero with a clear
//! message, and a failed run leaves no output behind.

mod common;

use common::tiny_llama;
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_llmq-gpu"))
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("the llmq-gpu binary runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn quantize_writes_a_model_that_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_llama(dir.path(), None);
    let out = dir.path().join("out");
    for device in ["cpu", "vulkan"] {
        let o = run(&[
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
            device,
            "--overwrite",
        ]);
        assert!(o.status.success(), "{device}: {}", stderr(&o));
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(text.contains("7 quantized, 4 kept"), "{device}: {text}");
    }
    assert!(
        out.join("tokenizer.json").exists(),
        "tokenizer copied along"
    );
    let o = run(&["inspect", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("model.layers.0.mlp.down_proj.weight"),
        "{text}"
    );
}

#[test]
fn missing_model_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let o = run(&[
        "quantize",
        "--model",
        "/nonexistent/model.gguf",
        "--out",
        out.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("/nonexistent/model.gguf"),
        "{}",
        stderr(&o)
    );
    assert!(!out.exists());
}

#[test]
fn bad_magic_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("model.gguf");
    std::fs::write(&f, b"GGMLnot-a-gguf-file-at-all").unwrap();
    let o = run(&["inspect", f.to_str().unwrap()]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("model.gguf") && !e.contains("panicked"), "{e}");
}

#[test]
fn group_size_that_does_not_divide_is_rejected_before_any_output_when_strict() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_llama(dir.path(), None);
    let out = dir.path().join("out");
    let (m, o_) = (model.to_str().unwrap(), out.to_str().unwrap());
    let base = [
        "quantize",
        "--model",
        m,
        "--out",
        o_,
        "--group-size",
        "48",
        "--device",
        "cpu",
    ];
    let o = run(&[&base[..], &["--strict-groups"]].concat());
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("group size 48 does not divide"), "{e}");
    assert!(!out.exists());
    // Without --strict-groups the last group of each row is shorter (GPTQ-style).
    let o = run(&base);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("7 quantized tensors end each row in a shorter group"),
        "{text}"
    );
}

#[test]
fn nan_weights_name_the_tensor_and_leave_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_llama(dir.path(), Some("model.layers.0.mlp.up_proj.weight"));
    let out = dir.path().join("out");
    let o = run(&[
        "quantize",
        "--model",
        model.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--device",
        "cpu",
        "--group-size",
        "32",
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("model.layers.0.mlp.up_proj.weight"),
        "{}",
        stderr(&o)
    );
    assert!(!out.exists(), "a failed run must leave no output");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "tiny-llama")
        .collect();
    assert!(
        leftovers.is_empty(),
        "temporary files left behind: {leftovers:?}"
    );
}

#[test]
fn unknown_device_and_bad_bits_are_usage_errors() {
    let o = run(&[
        "quantize", "--model", "m", "--out", "o", "--device", "quantum",
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("unknown device 'quantum'"),
        "{}",
        stderr(&o)
    );
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_llama(dir.path(), None);
    let o = run(&[
        "quantize",
        "--model",
        model.to_str().unwrap(),
        "--out",
        "o",
        "--bits",
        "9",
        "--device",
        "cpu",
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("bits must be between 2 and 8"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn missing_adapter_lists_what_exists() {
    let o = run(&[
        "quantize",
        "--model",
        "m",
        "--out",
        "o",
        "--device",
        "vulkan",
        "--adapter",
        "no-such-gpu-xyz",
    ]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("no adapter") && e.contains("adapters found"),
        "{e}"
    );
}

//! `eval` end to end: the lockstep driver on hand-made models (perplexity of
//! a uniform model, BOS written over window starts, KL of identical models),
//! and the `llmq-gpu eval` command on tiny synthetic models (JSON keys,
//! table and chart files, and every bad input: empty or too short text, a
//! window longer than the model's context, a reference with another
//! vocabulary, `--chunks 0`).

mod common;

use common::{text, tiny};
use llmq_gpu::eval::{evaluate_forwards, Windows};
use llmq_gpu::model::forward::{Decoder, Forward};
use llmq_gpu::model::ArchConfig;
use llmq_gpu::{CancelToken, Error, Result};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Mutex;

// ------------------------------------------------------------ hand-made models

/// Returns fixed logits for every position and records the windows it saw.
struct Fixed {
    arch: ArchConfig,
    /// Logits of one position, repeated.
    row: Vec<f32>,
    seen: Mutex<Vec<Vec<u32>>>,
}

impl Fixed {
    fn new(row: Vec<f32>) -> Self {
        let arch = ArchConfig {
            architecture: "llama".into(),
            hidden_size: 8,
            intermediate_size: 16,
            num_layers: 1,
            num_heads: 2,
            num_kv_heads: 1,
            vocab_size: row.len(),
            context_length: 64,
            rope_theta: 10000.0,
            rms_norm_eps: 1e-5,
            tied_embeddings: true,
            rope_adjacent_pairs: false,
            rope_scaling: None,
        };
        Self {
            arch,
            row,
            seen: Mutex::new(Vec::new()),
        }
    }
}

impl Forward for Fixed {
    fn arch(&self) -> &ArchConfig {
        &self.arch
    }
    fn device(&self) -> String {
        "test".into()
    }
    fn weight_bytes(&self) -> usize {
        0
    }
    fn logits(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        self.seen.lock().unwrap().push(tokens.to_vec());
        Ok(self.row.repeat(tokens.len()))
    }
    fn decoder(&self, _capacity: usize) -> Result<Box<dyn Decoder + '_>> {
        Err(Error::Config("no decoder in this test model".into()))
    }
}

fn text_tokens(n: usize, vocab: u32) -> Vec<u32> {
    (0..n as u32).map(|i| (i * 7 + 3) % vocab).collect()
}

#[test]
fn uniform_model_has_perplexity_equal_to_its_vocabulary() {
    let m = Fixed::new(vec![1.5; 50]);
    let tokens = text_tokens(100, 50);
    let w = Windows::plan(tokens.len(), 32, None, None).expect("plan");
    let mut chunks_seen = Vec::new();
    let out = evaluate_forwards(
        &[&m],
        None,
        &tokens,
        &w,
        &mut |i, s| chunks_seen.push((i, s[0].scores.nll.n)),
        &CancelToken::default(),
    )
    .expect("eval");
    assert_eq!(w.chunks, 3, "100 / 32 whole windows");
    assert_eq!(
        chunks_seen,
        [(0, 15), (1, 30), (2, 45)],
        "15 scored per window"
    );
    assert!((out[0].scores.ppl() - 50.0).abs() < 1e-9);
    // Windows are consecutive, without BOS (none asked for).
    let seen = m.seen.lock().unwrap();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[1], tokens[32..64]);
}

#[test]
fn bos_is_written_over_each_window_start() {
    let m = Fixed::new(vec![0.0; 50]);
    let tokens = text_tokens(64, 50);
    let w = Windows::plan(tokens.len(), 16, Some(3), Some(49)).expect("plan");
    evaluate_forwards(
        &[&m],
        None,
        &tokens,
        &w,
        &mut |_, _| {},
        &CancelToken::default(),
    )
    .expect("eval");
    let seen = m.seen.lock().unwrap();
    assert_eq!(seen.len(), 3, "--chunks 3 of 4 possible");
    for (i, win) in seen.iter().enumerate() {
        assert_eq!(win[0], 49, "window {i} starts with BOS");
        assert_eq!(win[1..], tokens[i * 16 + 1..(i + 1) * 16], "window {i}");
    }
}

#[test]
fn reference_against_itself_and_against_another_model() {
    let row: Vec<f32> = (0..20).map(|i| (i as f32 * 0.37).sin()).collect();
    let a = Fixed::new(row.clone());
    let mut other = row.clone();
    other.swap(0, 1);
    other[7] += 3.0; // another argmax
    let b = Fixed::new(other);
    let tokens = text_tokens(40, 20);
    let w = Windows::plan(tokens.len(), 10, None, None).expect("plan");
    let out = evaluate_forwards(
        &[&a, &b],
        Some(&a),
        &tokens,
        &w,
        &mut |_, _| {},
        &CancelToken::default(),
    )
    .expect("eval");
    assert_eq!(out[0].scores.kld.mean(), 0.0);
    assert_eq!(out[0].scores.top1.mean(), 1.0);
    assert!(out[1].scores.kld.mean() > 0.1);
    assert_eq!(out[1].scores.top1.mean(), 0.0);
    // The reference ran once per window, not once per model.
    assert_eq!(a.seen.lock().unwrap().len(), 2 * w.chunks);
    assert_eq!(b.seen.lock().unwrap().len(), w.chunks);
}

#[test]
fn cancel_and_vocabulary_mismatch_are_errors() {
    let a = Fixed::new(vec![0.0; 20]);
    let b = Fixed::new(vec![0.0; 21]);
    let tokens = text_tokens(40, 20);
    let w = Windows::plan(tokens.len(), 10, None, None).expect("plan");
    let e = evaluate_forwards(
        &[&b],
        Some(&a),
        &tokens,
        &w,
        &mut |_, _| {},
        &CancelToken::default(),
    )
    .expect_err("vocab");
    assert!(
        e.to_string().contains("21") && e.to_string().contains("20"),
        "{e}"
    );
    let cancel = CancelToken::default();
    cancel.cancel();
    let e =
        evaluate_forwards(&[&a], None, &tokens, &w, &mut |_, _| {}, &cancel).expect_err("cancel");
    assert!(matches!(e, Error::Cancelled), "{e}");
}

// ------------------------------------------------------------ the command

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_llmq-gpu"))
        .arg("eval")
        .args(args)
        .args(["--device", "cpu"])
        .output()
        .expect("the llmq-gpu binary runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn failure(o: &Output) -> String {
    assert!(
        !o.status.success(),
        "expected a failure: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    let e = stderr(o);
    assert!(!e.contains("panicked"), "{e}");
    e
}

#[test]
fn json_report_has_every_key_and_identical_reference_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let m = tiny(dir.path(), true);
    let t = text(dir.path(), 200);
    let o = run(&[
        "--model",
        s(&m),
        "--reference",
        s(&m),
        "--text",
        s(&t),
        "--ctx",
        "32",
        "--chunks",
        "4",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("stdout is one JSON object");
    for key in [
        "ppl",
        "ppl_stderr",
        "kld",
        "kld_stderr",
        "top1_agreement",
        "size_bytes",
        "bits_per_weight",
        "tokens_per_second",
        "device",
        "ctx",
        "chunks",
        "tokens_evaluated",
        "tokens_scored",
        "seconds",
    ] {
        assert!(
            v.get(key).is_some_and(|x| !x.is_null()),
            "key {key} missing: {v}"
        );
    }
    let f = |k: &str| v[k].as_f64().unwrap();
    assert!(f("ppl") > 1.0 && f("ppl").is_finite(), "{v}");
    assert_eq!(f("kld"), 0.0, "a model against itself");
    assert_eq!(f("top1_agreement"), 1.0);
    assert_eq!(f("bits_per_weight"), 32.0, "f32 safetensors");
    assert_eq!(v["chunks"], 4);
    assert_eq!(v["tokens_evaluated"], 4 * 32);
    assert_eq!(v["tokens_scored"], 4 * 15);
    assert_eq!(v["bos"], true, "tokenizer_config asks for BOS");
    assert!(v["device"].as_str().unwrap().starts_with("cpu"), "{v}");
    let weights = std::fs::metadata(m.join("model.safetensors"))
        .unwrap()
        .len();
    assert_eq!(v["size_bytes"].as_u64().unwrap(), weights);
}

#[test]
fn several_models_write_a_table_and_a_chart() {
    let dir = tempfile::tempdir().unwrap();
    let m = tiny(dir.path(), false);
    let q = dir.path().join("tiny-w8");
    let o = Command::new(env!("CARGO_BIN_EXE_llmq-gpu"))
        .args([
            "quantize",
            "--model",
            s(&m),
            "--out",
            s(&q),
            "--bits",
            "8",
            "--group-size",
            "32",
            "--device",
            "cpu",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let t = text(dir.path(), 200);
    let (table, chart) = (dir.path().join("t.md"), dir.path().join("c.svg"));
    let o = run(&[
        "--model",
        s(&m),
        "--model",
        s(&q),
        "--reference",
        s(&m),
        "--text",
        s(&t),
        "--ctx",
        "32",
        "--chunks",
        "2",
        "--json",
        "--table",
        s(&table),
        "--chart",
        s(&chart),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("JSON");
    let a = v.as_array().expect("an array for several models");
    assert_eq!(a.len(), 2);
    // int8 codes + an f16 scale and a u8 zero per 32 weights.
    assert_eq!(a[1]["bits_per_weight"].as_f64().unwrap(), 8.75);
    assert!(
        a[1]["kld"].as_f64().unwrap() > 0.0,
        "quantized differs from f32"
    );
    assert!(a[1]["size_bytes"].as_u64() < a[0]["size_bytes"].as_u64());
    let md = std::fs::read_to_string(&table).expect("table written");
    assert_eq!(
        md.lines().filter(|l| l.starts_with("| tiny-")).count(),
        2,
        "{md}"
    );
    assert!(
        md.contains("| model | bits/weight |") && md.contains("8.750"),
        "{md}"
    );
    let svg = std::fs::read_to_string(&chart).expect("chart written");
    assert!(
        svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
        "{svg}"
    );
    assert!(
        svg.contains("bits per weight") && svg.contains("perplexity"),
        "axis labels"
    );
    assert!(
        svg.contains(">tiny-llama (") && svg.contains(">tiny-w8 ("),
        "point labels"
    );
    assert_eq!(svg.matches("<circle").count(), 2);
}

/// `quantize`, `inspect`, `eval` and `bench --model` print the same stored
/// size of the block linears for the same file, and it is the bytes their
/// parts take in the file's safetensors header.
#[test]
fn every_command_prints_the_same_stored_size() {
    let dir = tempfile::tempdir().unwrap();
    let m = tiny(dir.path(), false);
    let t = text(dir.path(), 200);
    for (bits, group, sym) in [("4", "32", false), ("3", "0", true)] {
        let q = dir.path().join(format!("tiny-w{bits}"));
        let mut args = vec!["quantize", "--model", s(&m), "--out", s(&q), "--bits", bits];
        args.extend(["--group-size", group, "--device", "cpu", "--overwrite"]);
        if group == "0" {
            args.retain(|a| *a != "--group-size" && *a != "0");
            args.push("--per-channel");
        }
        if sym {
            args.push("--sym");
        }
        let cli = |args: &[&str]| {
            let o = Command::new(env!("CARGO_BIN_EXE_llmq-gpu"))
                .args(args)
                .output()
                .unwrap();
            assert!(o.status.success(), "{args:?}: {}", stderr(&o));
            let out = String::from_utf8_lossy(&o.stdout).into_owned();
            let line = out
                .lines()
                .map(str::trim)
                .find(|l| l.starts_with("block linears:"))
                .unwrap_or_else(|| panic!("{args:?} prints no stored size: {out}"))
                .to_string();
            line
        };
        let quantize = cli(&args);
        let inspect = cli(&["inspect", s(&q)]);
        let eval = cli(&["eval", "--model", s(&q), "--text", s(&t), "--ctx", "32"]);
        let bench = cli(&[
            "bench",
            "--model",
            s(&q),
            "--prompt-tokens",
            "8",
            "--decode-tokens",
            "2",
            "--iters",
            "1",
            "--device",
            "cpu",
        ]);
        assert_eq!(quantize, inspect, "W{bits}");
        assert_eq!(quantize, eval, "W{bits}");
        assert_eq!(quantize, bench, "W{bits}");
        // The parts of the block linears as the file's header lists them.
        let bytes = std::fs::read(q.join("model.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let linear = [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ];
        let stored: usize = st
            .tensors()
            .iter()
            .filter(|(n, _)| n.starts_with("model.layers.") && linear.iter().any(|l| n.contains(l)))
            .map(|(_, v)| v.data().len())
            .sum();
        assert!(
            quantize.contains(&format!(" {stored} bytes stored")),
            "W{bits}: {quantize}, the file's parts hold {stored} bytes"
        );
    }
}

#[test]
fn human_summary_names_the_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let m = tiny(dir.path(), false);
    let t = text(dir.path(), 100);
    let o = run(&["--model", s(&m), "--text", s(&t), "--ctx", "16"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    for want in [
        "perplexity",
        "bits per weight  32.000",
        "tokens/s",
        "size on disk",
    ] {
        assert!(out.contains(want), "{want}: {out}");
    }
    assert!(!out.contains("KL divergence"), "no reference given: {out}");
}

#[test]
fn bad_inputs_fail_with_clear_messages() {
    let dir = tempfile::tempdir().unwrap();
    let m = tiny(dir.path(), false);
    let long = text(dir.path(), 200);
    let short = text(dir.path(), 3);
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "\n  \n").unwrap();

    let e = failure(&run(&["--model", s(&m), "--text", s(&empty)]));
    assert!(e.contains("empty.txt") && e.contains("empty"), "{e}");

    let e = failure(&run(&["--model", s(&m), "--text", "/nonexistent/t.txt"]));
    assert!(e.contains("/nonexistent/t.txt"), "{e}");

    let e = failure(&run(&[
        "--model",
        s(&m),
        "--text",
        s(&short),
        "--ctx",
        "64",
    ]));
    assert!(
        e.contains("tokens, too few for one window of --ctx 64"),
        "{e}"
    );

    let e = failure(&run(&[
        "--model",
        s(&m),
        "--text",
        s(&long),
        "--ctx",
        "512",
    ]));
    assert!(
        e.contains("--ctx 512 exceeds the context length 256"),
        "{e}"
    );

    let e = failure(&run(&[
        "--model",
        s(&m),
        "--text",
        s(&long),
        "--chunks",
        "0",
    ]));
    assert!(e.contains("--chunks 0"), "{e}");

    let e = failure(&run(&["--model", s(&m), "--text", s(&long), "--ctx", "2"]));
    assert!(e.contains("at least 3"), "{e}");

    // The same model with a 40-token vocabulary (config edited; never loaded).
    let other_dir = dir.path().join("other");
    std::fs::create_dir_all(&other_dir).unwrap();
    let other = tiny(&other_dir, false);
    let cfg_path = other.join("config.json");
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["vocab_size"] = 40.into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let e = failure(&run(&[
        "--model",
        s(&other),
        "--reference",
        s(&m),
        "--text",
        s(&long),
        "--ctx",
        "32",
    ]));
    assert!(
        e.contains("vocabulary of 40") && e.contains("has 32"),
        "{e}"
    );
    assert!(
        e.contains(s(&other)) && e.contains(s(&m)),
        "names both models: {e}"
    );
}

/// `--llama-cpp-activations`: a GGUF of Q4_1 linears is scored with each
/// linear's input rounded to q8_0 blocks, as llama.cpp runs it (a small
/// change of perplexity, not none), an f32 model is unchanged, and the
/// GPU is refused.
#[test]
fn llama_cpp_activations_round_quantized_inputs_only() {
    let dir = tempfile::tempdir().unwrap();
    let persuasion = Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/austen/persuasion.txt");
    let gguf = common::smollm2_gguf();
    let ppl = |model: &Path, text: &Path, ctx: &str, flag: bool| {
        let mut args = vec![
            "--model",
            s(model),
            "--text",
            s(text),
            "--ctx",
            ctx,
            "--chunks",
            "2",
            "--json",
        ];
        if flag {
            args.push("--llama-cpp-activations");
        }
        let o = run(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        v["ppl"].as_f64().unwrap()
    };
    let (plain, rounded) = (
        ppl(&gguf, &persuasion, "128", false),
        ppl(&gguf, &persuasion, "128", true),
    );
    eprintln!(
        "SmolLM2 Q4_1, 2 windows of 128: PPL {plain:.4} plain, {rounded:.4} with q8_0 inputs"
    );
    assert!(plain != rounded && (plain - rounded).abs() < 0.03 * plain);
    let m = tiny(dir.path(), true);
    let t = text(dir.path(), 200);
    assert_eq!(ppl(&m, &t, "32", false), ppl(&m, &t, "32", true));
    let o = Command::new(env!("CARGO_BIN_EXE_llmq-gpu"))
        .args([
            "eval",
            "--model",
            s(&m),
            "--text",
            s(&t),
            "--ctx",
            "32",
            "--llama-cpp-activations",
        ])
        .args(["--device", "vulkan"])
        .output()
        .unwrap();
    let e = failure(&o);
    assert!(e.contains("--device cpu"), "{e}");
}

//! The f32 CPU forward pass against an independent numpy implementation
//! (tests/py/llama_forward.py, reading the GGUF with llama.cpp's `gguf`
//! package and computing in float64, with HF-layout q/k and half-split RoPE)
//! on the real SmolLM2-135M model.
//!
//! Tolerance: max |Δlogit| ≤ 1e-3 · max |logit|, and the argmax must agree at
//! every position.
//!
//! Needs: scripts/fetch-fixtures.sh (the model) and
//! `pip install -r scripts/requirements-test.txt` (gguf, numpy).

mod common;

use llmq_gpu::model::forward::{CpuForward, Forward, Linear, LinearSite};
use llmq_gpu::model::ModelView;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

/// A short fixed sequence of valid ids (< 49152), starting with BOS-like ids.
const TOKENS: &[u32] = &[
    1, 9690, 198, 2683, 359, 253, 5356, 2896, 28, 1170, 314, 260, 3358, 282, 4649, 47, 2, 198, 1,
    520, 9531, 198, 504, 3758, 282, 4649, 314, 30,
];
const REL_TOL: f32 = 1e-3;

fn model() -> &'static CpuForward {
    static M: OnceLock<CpuForward> = OnceLock::new();
    M.get_or_init(|| {
        let view = ModelView::open(common::smollm2_gguf()).expect("open SmolLM2");
        CpuForward::load(&view).expect("load weights")
    })
}

fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |b, (i, &v)| if v > b.1 { (i, v) } else { b },
        )
        .0
}

/// (max |a − b|, max |b|)
fn diff(a: &[f32], b: &[f32]) -> (f32, f32) {
    assert_eq!(a.len(), b.len(), "logit counts differ");
    let d = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    let m = b.iter().map(|v| v.abs()).fold(0f32, f32::max);
    (d, m)
}

fn reference_logits(tokens: &[u32]) -> Vec<f32> {
    let python = common::python_with_references();
    let dir = tempfile::tempdir().expect("temp dir");
    let out_file = dir.path().join("logits.f32");
    let ids: Vec<String> = tokens.iter().map(|t| t.to_string()).collect();
    let out = Command::new(&python)
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py/llama_forward.py"))
        .arg(common::smollm2_gguf())
        .arg(&out_file)
        .arg(ids.join(","))
        .output()
        .expect("run llama_forward.py");
    assert!(
        out.status.success(),
        "llama_forward.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&out_file).expect("reference logits");
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[test]
fn logits_match_numpy_reference() {
    let reference = reference_logits(TOKENS);
    let m = model();
    let t = Instant::now();
    let ours = m.logits(TOKENS).expect("forward");
    eprintln!("rust forward, {} tokens: {:.2?}", TOKENS.len(), t.elapsed());
    let (d, max) = diff(&ours, &reference);
    eprintln!(
        "max |Δlogit| = {d:.3e}, max |logit| = {max:.3}, relative {:.3e}",
        d / max
    );
    assert!(d <= REL_TOL * max, "max |Δ| {d} > {REL_TOL} · {max}");
    let vocab = m.weights.arch.vocab_size;
    for (p, (a, b)) in ours
        .chunks_exact(vocab)
        .zip(reference.chunks_exact(vocab))
        .enumerate()
    {
        assert_eq!(argmax(a), argmax(b), "argmax differs at position {p}");
    }
}

#[test]
fn layer_api_matches_logits_and_hooks_see_each_linear_input() {
    let m = model();
    let a = &m.weights.arch;
    let seq = TOKENS.len();
    let whole = m.logits(TOKENS).expect("forward");
    let mut hidden = m.embed(TOKENS).expect("embed");
    for i in 0..a.num_layers {
        let mut seen = Vec::new();
        m.layer(i, &mut hidden, seq, &mut |inp| {
            assert_eq!(inp.layer, i);
            assert_eq!(inp.seq, seq);
            assert_eq!(inp.x.len(), seq * inp.width, "{:?} input size", inp.site);
            assert!(inp.x.iter().all(|v| v.is_finite()));
            seen.push((inp.site, inp.width));
        })
        .expect("layer");
        let (h, f) = (a.hidden_size, a.intermediate_size);
        assert_eq!(
            seen,
            [
                (LinearSite::AttnQkv, h),
                (LinearSite::AttnOutput, h),
                (LinearSite::MlpGateUp, h),
                (LinearSite::MlpDown, f),
            ],
            "layer {i}"
        );
    }
    assert_eq!((a.hidden_size, a.intermediate_size), (576, 1536));
    let stepped = m.final_norm_and_head(&hidden).expect("head");
    assert_eq!(
        stepped, whole,
        "layer-at-a-time must give bit-identical logits"
    );
}

/// Un-permuting q/k to the Hugging Face layout and switching RoPE to
/// half-split pairs must give the same logits: checks the HF path.
#[test]
fn half_split_rope_on_hf_layout_matches() {
    let m = model();
    let mut w = m.weights.clone();
    let (hd, h) = (w.arch.head_dim(), w.arch.hidden_size);
    let unpermute = |x: &[f32], heads: usize| {
        // GGUF row (head, i, pair) -> HF row (head, pair, i).
        let mut out = vec![0f32; x.len()];
        for head in 0..heads {
            for i in 0..hd / 2 {
                for p in 0..2 {
                    let src = head * hd + 2 * i + p;
                    let dst = head * hd + p * hd / 2 + i;
                    out[dst * h..(dst + 1) * h].copy_from_slice(&x[src * h..(src + 1) * h]);
                }
            }
        }
        out
    };
    for l in &mut w.layers {
        let dense = |lin: &Linear| lin.dense_weights().expect("GGUF linears dequantize");
        let (q, k) = (dense(&l.q), dense(&l.k));
        let (qr, kr) = (l.q.rows(), l.k.rows());
        l.q = Linear::dense(qr, h, unpermute(&q, w.arch.num_heads)).expect("q");
        l.k = Linear::dense(kr, h, unpermute(&k, w.arch.num_kv_heads)).expect("k");
    }
    w.arch.rope_adjacent_pairs = false;
    let hf = CpuForward::new(w).logits(TOKENS).expect("forward");
    let gguf = m.logits(TOKENS).expect("forward");
    let (d, max) = diff(&hf, &gguf);
    eprintln!("half-split vs adjacent: max |Δ| = {d:.3e}");
    assert!(d <= 1e-4 * max, "max |Δ| {d}");
}

#[test]
fn bad_inputs_are_errors() {
    let m = model();
    let a = &m.weights.arch;
    let e = m.logits(&[]).expect_err("empty");
    assert!(e.to_string().contains("at least one token"), "{e}");
    let e = m.logits(&[1, a.vocab_size as u32]).expect_err("id");
    assert!(e.to_string().contains("outside the vocabulary"), "{e}");
    let long = vec![1u32; a.context_length + 1];
    let e = m.logits(&long).expect_err("long");
    assert!(e.to_string().contains("context length"), "{e}");
    let mut hidden = vec![0f32; 3];
    let e = m.layer(0, &mut hidden, 1, &mut |_| {}).expect_err("size");
    assert!(e.to_string().contains("expected a multiple of seq"), "{e}");
    let mut hidden = vec![0f32; a.hidden_size];
    assert!(m.layer(a.num_layers, &mut hidden, 1, &mut |_| {}).is_err());
}

#[test]
fn sixty_four_tokens_give_finite_logits() {
    // Speed belongs in benchmarks, not tests: this only checks a longer
    // sequence runs through and stays finite (the time is printed).
    let m = model();
    let tokens: Vec<u32> = (0..64).map(|i| (i * 769 + 1) % 49152).collect();
    let t = Instant::now();
    let logits = m.logits(&tokens).expect("forward");
    eprintln!("64 tokens: {:.2?}", t.elapsed());
    assert_eq!(logits.len(), 64 * 49152);
    assert!(logits.iter().all(|v| v.is_finite()));
}

#[test]
fn kv_cache_decoding_matches_full_logits() {
    let m = model();
    let vocab = m.weights.arch.vocab_size;
    let full = m.logits(TOKENS).expect("forward");
    let mut dec = Forward::decoder(m, TOKENS.len()).expect("decoder");
    // A prompt of 10, then one token at a time.
    let mut last = dec.feed(&TOKENS[..10]).expect("prefill");
    let mut worst = 0f32;
    for p in 10..=TOKENS.len() {
        let (d, max) = diff(&last, &full[(p - 1) * vocab..p * vocab]);
        worst = worst.max(d / max);
        assert!(d <= 1e-4 * max, "position {}: max |Δ| {d}", p - 1);
        if p < TOKENS.len() {
            last = dec.feed(&TOKENS[p..p + 1]).expect("decode");
        }
    }
    assert_eq!(dec.position(), TOKENS.len());
    eprintln!("cached vs full: worst relative |Δ| {worst:.2e}");
    let e = dec.feed(&[1]).expect_err("cache full");
    assert!(e.to_string().contains("KV cache"), "{e}");
}

#[test]
fn a_batch_of_sequences_matches_each_sequence_alone() {
    let m = model();
    let a = &m.weights.arch;
    let seq = 14;
    let (s0, s1) = (&TOKENS[..seq], &TOKENS[seq..2 * seq]);
    let mut hidden = m.embed(&TOKENS[..2 * seq]).expect("embed");
    let mut rows_seen = 0;
    for i in 0..a.num_layers {
        m.layer(i, &mut hidden, seq, &mut |inp| rows_seen = inp.seq)
            .expect("layer");
    }
    assert_eq!(rows_seen, 2 * seq, "hooks see every sequence of the batch");
    let batched = m.final_norm_and_head(&hidden).expect("head");
    let alone = [m.logits(s0).expect("s0"), m.logits(s1).expect("s1")].concat();
    let (d, max) = diff(&batched, &alone);
    assert!(d <= 1e-5 * max, "max |Δ| {d}");
}

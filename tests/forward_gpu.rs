//! The GPU forward pass against the CPU one: each kernel against its CPU op
//! on fresh random inputs (seed printed; replay with `LLMQ_TEST_SEED`), then
//! whole models: a tiny random Llama dense and packed, the GPU decoder
//! against the full GPU logits, and the real SmolLM2-135M.
//!
//! Tolerances, all relative to the largest magnitude involved, since GPU and
//! CPU compute the same f32 formulas in different summation orders (a few
//! ulp, 2^-24 ≈ 6e-8, per operation times the terms summed):
//! - rms_norm, silu_mul, add: 1e-5 · max |out|; add_bias 1e-6;
//! - rope: 1e-6 · max |out| (same host-computed cos/sin, only FMA contraction differs);
//! - attention: 1e-5 · max |v| (the output is a convex combination of v rows);
//! - dense matmul: 1e-5 · Σ|x||w| per output (≤ 100 terms here);
//! - whole models: 1e-4 · max |logit| (tiny, and SmolLM2 through 30 layers,
//!   where 2.4e-6 was measured on lavapipe: 8.6e-5 of max |logit| 35), argmax
//!   equal at every position.

mod common;

use llmq_gpu::backend::gpu::attention::{self as gpu_attention, AttnRows};
use llmq_gpu::backend::gpu::matmul_dense::{dense_resident, GpuDenseWeights};
use llmq_gpu::backend::gpu::{elementwise, list_adapters, rope as gpu_rope, DeviceChoice};
use llmq_gpu::backend::CpuBackend;
use llmq_gpu::encoding::EncodedTensor;
use llmq_gpu::model::forward::ops::{self, AttnShape, RopeTable};
use llmq_gpu::model::forward::{
    open_forward, CpuForward, Forward, GpuForward, Linear, LlamaWeights,
};
use llmq_gpu::model::{ModelView, TensorKind};
use llmq_gpu::quant::rtn;
use llmq_gpu::{Granularity, QuantScheme};
use rand::Rng;
use std::time::Instant;

fn uniform(rng: &mut impl Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.gen_range(-scale..scale)).collect()
}

fn max_abs(v: &[f32]) -> f32 {
    v.iter().map(|x| x.abs()).fold(0f32, f32::max)
}

/// max |got − want|
fn max_diff(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len(), "output lengths differ");
    got.iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max)
}

/// Asserts max |got − want| ≤ rel · scale and returns the relative error.
fn check(label: &str, got: &[f32], want: &[f32], rel: f32, scale: f32) -> f32 {
    assert!(
        got.iter().all(|v| v.is_finite()),
        "{label}: non-finite output"
    );
    let d = max_diff(got, want);
    assert!(
        d <= rel * scale,
        "{label}: max |Δ| {d:.3e} > {rel:.0e} · {scale:.3e}"
    );
    d / scale.max(f32::MIN_POSITIVE)
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

#[test]
fn rms_norm_matches_cpu() {
    let ctx = common::gpu();
    let mut rng = common::rng("rms_norm_matches_cpu");
    for (rows, cols) in [(1, 64), (5, 576), (3, 100), (2, 1000)] {
        let x = uniform(&mut rng, rows * cols, 3.0);
        let w = uniform(&mut rng, cols, 1.5);
        let want = ops::rms_norm(&x, &w, 1e-5);
        let got = elementwise::rms_norm(&ctx, &x, &w, 1e-5).unwrap();
        check(
            &format!("rms_norm {rows}x{cols}"),
            &got,
            &want,
            1e-5,
            max_abs(&want),
        );
    }
}

#[test]
fn silu_mul_and_add_match_cpu() {
    let ctx = common::gpu();
    let mut rng = common::rng("silu_mul_and_add_match_cpu");
    for n in [1, 63, 1000, 70_001] {
        let g = uniform(&mut rng, n, 12.0);
        let u = uniform(&mut rng, n, 2.0);
        let mut want = g.clone();
        ops::silu_mul(&mut want, &u);
        let got = elementwise::silu_mul(&ctx, &g, &u).unwrap();
        check(&format!("silu_mul {n}"), &got, &want, 1e-5, max_abs(&want));
        let mut want = g.clone();
        ops::add_in_place(&mut want, &u);
        let got = elementwise::add(&ctx, &g, &u).unwrap();
        check(&format!("add {n}"), &got, &want, 1e-5, max_abs(&want));
    }
    for (rows, cols) in [(1, 7), (5, 64), (33, 96)] {
        let x = uniform(&mut rng, rows * cols, 3.0);
        let b = uniform(&mut rng, cols, 1.0);
        let mut want = x.clone();
        ops::add_bias(&mut want, &b);
        let got = elementwise::add_bias(&ctx, &x, &b).unwrap();
        check(
            &format!("add_bias {rows}x{cols}"),
            &got,
            &want,
            1e-6,
            max_abs(&want),
        );
    }
}

#[test]
fn rope_both_layouts_match_cpu() {
    let ctx = common::gpu();
    let mut rng = common::rng("rope_both_layouts_match_cpu");
    // A batch of 2 sequences of 5 rows at positions 37..42; hd 64 and 16.
    for (heads, hd, theta) in [(3, 64, 10000.0), (2, 16, 500000.0)] {
        let (batch, seq, start) = (2, 5, 37);
        let inv_freq = ops::rope_inv_freq(hd, theta);
        let table = RopeTable::new(start, seq, &inv_freq);
        let x = uniform(&mut rng, batch * seq * heads * hd, 2.0);
        for adjacent in [true, false] {
            let mut want = x.clone();
            for s in want.chunks_exact_mut(seq * heads * hd) {
                table.apply(s, heads, adjacent);
            }
            let got = gpu_rope::rope(&ctx, &x, &table, seq, heads, adjacent).unwrap();
            let label = format!("rope hd {hd} adjacent {adjacent}");
            check(&label, &got, &want, 1e-6, max_abs(&want));
            assert!(max_diff(&x, &want) > 0.1, "{label}: rotation did nothing");
        }
    }
}

fn cpu_attention_batch(q: &[f32], k: &[f32], v: &[f32], s: AttnShape, r: AttnRows) -> Vec<f32> {
    let (qw, kvw) = (s.heads * s.head_dim, s.kv_heads * s.head_dim);
    let visible = r.start + r.seq;
    (0..r.batch)
        .flat_map(|b| {
            let kb = &k[b * r.kv_rows * kvw..][..visible * kvw];
            let vb = &v[b * r.kv_rows * kvw..][..visible * kvw];
            ops::attention(
                &q[b * r.seq * qw..][..r.seq * qw],
                kb,
                vb,
                r.seq,
                r.start,
                s,
            )
        })
        .collect()
}

#[test]
fn attention_gqa_fresh_batch_and_cached_match_cpu() {
    let ctx = common::gpu();
    let mut rng = common::rng("attention_gqa_fresh_batch_and_cached_match_cpu");
    for (heads, kv_heads, head_dim) in [(6, 2, 40), (4, 1, 128), (9, 3, 64)] {
        let s = AttnShape {
            heads,
            kv_heads,
            head_dim,
        };
        let (qw, kvw) = (heads * head_dim, kv_heads * head_dim);
        // Fresh: 2 sequences of 70 (more than one 64-key tile). Cached: 3
        // new rows after 75 cached, in a cache of 80 rows whose unused tail
        // holds huge values that must never be read.
        for r in [
            AttnRows {
                batch: 2,
                seq: 70,
                start: 0,
                kv_rows: 70,
            },
            AttnRows {
                batch: 1,
                seq: 3,
                start: 75,
                kv_rows: 80,
            },
        ] {
            let q = uniform(&mut rng, r.batch * r.seq * qw, 1.5);
            let mut k = uniform(&mut rng, r.batch * r.kv_rows * kvw, 1.5);
            let mut v = uniform(&mut rng, r.batch * r.kv_rows * kvw, 1.0);
            for b in 0..r.batch {
                let tail = (b * r.kv_rows + r.start + r.seq) * kvw..(b + 1) * r.kv_rows * kvw;
                k[tail.clone()].fill(1e6);
                v[tail].fill(1e6);
            }
            let want = cpu_attention_batch(&q, &k, &v, s, r);
            let got = gpu_attention::attention(&ctx, &q, &k, &v, s, r).unwrap();
            check(&format!("attention {s:?} {r:?}"), &got, &want, 1e-5, 1.0);
        }
    }
    let bad = AttnShape {
        heads: 2,
        kv_heads: 1,
        head_dim: 512,
    };
    let r = AttnRows {
        batch: 1,
        seq: 1,
        start: 0,
        kv_rows: 1,
    };
    let e = gpu_attention::attention(&ctx, &[0.0; 1024], &[0.0; 512], &[0.0; 512], bad, r)
        .expect_err("head dim 512");
    assert!(e.to_string().contains("head dim"), "{e}");
}

fn dense_case(
    ctx: &llmq_gpu::backend::gpu::GpuContext,
    w: &GpuDenseWeights,
    wv: &[f32],
    x: &[f32],
    tokens: usize,
    label: &str,
) {
    let (rows, cols) = (w.rows, w.cols);
    let want = ops::matmul_t(x, wv, tokens, cols, rows);
    let got = dense_resident(ctx, w, x, tokens).unwrap();
    assert_eq!(got.len(), want.len(), "{label}: output length");
    for t in 0..tokens {
        for r in 0..rows {
            let mag: f32 = (0..cols)
                .map(|j| (x[t * cols + j] * wv[r * cols + j]).abs())
                .sum();
            let (g, e) = (got[t * rows + r], want[t * rows + r]);
            assert!(
                (g - e).abs() <= 1e-5 * (mag + 1e-6),
                "{label}: token {t} row {r}: got {g}, cpu {e}"
            );
        }
    }
}

#[test]
fn dense_matmul_matches_cpu() {
    let ctx = common::gpu();
    let mut rng = common::rng("dense_matmul_matches_cpu");
    for (rows, cols) in [(67, 100), (130, 64), (5, 7)] {
        let wv = uniform(&mut rng, rows * cols, 0.5);
        let w = GpuDenseWeights::upload(&ctx, &wv, rows, cols).unwrap();
        for tokens in [1, 3, 5, 9] {
            let x = uniform(&mut rng, tokens * cols, 1.0);
            dense_case(
                &ctx,
                &w,
                &wv,
                &x,
                tokens,
                &format!("dense [{rows}x{cols}] tokens {tokens}"),
            );
        }
    }
}

#[test]
fn dense_matmul_split_by_rows_matches_cpu() {
    let ctx = common::fresh_gpu();
    let mut rng = common::rng("dense_matmul_split_by_rows_matches_cpu");
    // 100 cols: 400 bytes per row; a 2 KiB binding gives 5-row weight chunks
    // and 5-token activation chunks.
    ctx.set_max_binding(2048);
    let (rows, cols) = (67, 100);
    let wv = uniform(&mut rng, rows * cols, 0.5);
    let w = GpuDenseWeights::upload(&ctx, &wv, rows, cols).unwrap();
    assert_eq!(w.n_chunks(), 14, "weight split into 5-row chunks");
    for tokens in [1, 9] {
        let x = uniform(&mut rng, tokens * cols, 1.0);
        dense_case(
            &ctx,
            &w,
            &wv,
            &x,
            tokens,
            &format!("split dense tokens {tokens}"),
        );
    }
}

const TINY_TOKENS: &[u32] = &[1, 5, 9, 31, 0, 17, 17, 3, 22, 8, 30, 2];

fn tiny_weights() -> LlamaWeights {
    let dir = tempfile::tempdir().unwrap();
    let path = common::tiny_llama(dir.path(), None);
    LlamaWeights::load(&ModelView::open(&path).unwrap()).unwrap()
}

/// The tiny model with every block linear quantized to W4 g32 with RTN.
fn packed(mut w: LlamaWeights) -> LlamaWeights {
    let scheme = QuantScheme::new(4, false, Granularity::Group(32)).unwrap();
    for (i, l) in w.layers.iter_mut().enumerate() {
        for kind in [
            TensorKind::AttnQ,
            TensorKind::AttnK,
            TensorKind::AttnV,
            TensorKind::AttnOutput,
            TensorKind::MlpGate,
            TensorKind::MlpUp,
            TensorKind::MlpDown,
        ] {
            let lin = l.linear_mut(kind).unwrap();
            let (rows, cols) = (lin.rows(), lin.cols());
            let dense = lin.as_dense().unwrap().to_vec();
            let name = format!("layer {i} {kind:?}");
            *lin = Linear::Packed(EncodedTensor::Affine(
                rtn::quantize(&CpuBackend, &name, &dense, rows, cols, &scheme).unwrap(),
            ));
        }
    }
    w
}

/// GPU vs CPU logits of the same weights; returns the relative error.
fn gpu_vs_cpu(label: &str, w: LlamaWeights, tokens: &[u32]) -> f32 {
    let vocab = w.arch.vocab_size;
    let cpu = CpuForward::new(w.clone()).logits(tokens).unwrap();
    let gpu = GpuForward::new(common::gpu(), w)
        .unwrap()
        .logits(tokens)
        .unwrap();
    let rel = check(label, &gpu, &cpu, 1e-4, max_abs(&cpu));
    for (p, (a, b)) in gpu
        .chunks_exact(vocab)
        .zip(cpu.chunks_exact(vocab))
        .enumerate()
    {
        assert_eq!(
            argmax(a),
            argmax(b),
            "{label}: argmax differs at position {p}"
        );
    }
    eprintln!("{label}: relative max |Δlogit| {rel:.2e}");
    rel
}

#[test]
fn tiny_llama_dense_gpu_matches_cpu() {
    gpu_vs_cpu("tiny dense", tiny_weights(), TINY_TOKENS);
}

#[test]
fn tiny_llama_packed_gpu_matches_cpu_packed() {
    let w = packed(tiny_weights());
    assert!(w.layers[0].q.is_packed());
    gpu_vs_cpu("tiny packed (GEMM)", w.clone(), TINY_TOKENS);
    // Four tokens or fewer take the GEMV kernel.
    gpu_vs_cpu("tiny packed (GEMV)", w, &TINY_TOKENS[..3]);
}

/// Prefill then one token at a time must give the full pass's logits.
fn decoder_matches_full(label: &str, m: &GpuForward, rel: f32) {
    let vocab = m.arch().vocab_size;
    let full = m.logits(TINY_TOKENS).unwrap();
    let n = TINY_TOKENS.len();
    let mut dec = m.decoder(n).unwrap();
    let mut last = dec.feed(&TINY_TOKENS[..5]).unwrap();
    for p in 5..=n {
        let want = &full[(p - 1) * vocab..p * vocab];
        check(
            &format!("{label} position {}", p - 1),
            &last,
            want,
            rel,
            max_abs(want),
        );
        if p < n {
            last = dec.feed(&TINY_TOKENS[p..p + 1]).unwrap();
        }
    }
    assert_eq!(dec.position(), n);
    let e = dec.feed(&[1]).expect_err("cache full");
    assert!(e.to_string().contains("KV cache"), "{e}");
}

#[test]
fn gpu_decoder_matches_full_gpu_logits() {
    let ctx = common::gpu();
    let dense = GpuForward::new(ctx.clone(), tiny_weights()).unwrap();
    decoder_matches_full("dense decoder", &dense, 1e-5);
    // Packed: the prefill runs the GEMM kernel, single tokens the GEMV.
    let q = GpuForward::new(ctx, packed(tiny_weights())).unwrap();
    decoder_matches_full("packed decoder", &q, 1e-4);
}

/// Inputs whose activations exceed one binding go through in chunks of rows
/// (here 4 rows under a 2 KiB limit): same logits as one pass.
#[test]
fn chunked_rows_match_one_pass() {
    let small = common::fresh_gpu();
    small.set_max_binding(2048);
    let chunked = GpuForward::new(std::sync::Arc::new(small), tiny_weights()).unwrap();
    // 32 key values of 4 bytes per position: 16 positions fill 2 KiB.
    let e = chunked.decoder(17).err().expect("cache over one binding");
    assert!(e.to_string().contains("KV cache of 17 positions"), "{e}");
    let whole = GpuForward::new(common::gpu(), tiny_weights()).unwrap();
    let want = whole.logits(TINY_TOKENS).unwrap();
    let got = chunked.logits(TINY_TOKENS).unwrap();
    check("chunked logits", &got, &want, 1e-5, max_abs(&want));
    let vocab = whole.arch().vocab_size;
    let mut dec = chunked.decoder(TINY_TOKENS.len()).unwrap();
    let last = dec.feed(TINY_TOKENS).unwrap();
    check(
        "chunked prefill",
        &last,
        &want[want.len() - vocab..],
        1e-5,
        max_abs(&want),
    );
}

#[test]
fn gpu_forward_bad_inputs_are_errors() {
    let m = GpuForward::new(common::gpu(), tiny_weights()).unwrap();
    let a = m.arch().clone();
    let e = m.logits(&[]).expect_err("empty");
    assert!(e.to_string().contains("at least one token"), "{e}");
    let e = m.logits(&[1, a.vocab_size as u32]).expect_err("id");
    assert!(e.to_string().contains("outside the vocabulary"), "{e}");
    let e = m.logits(&vec![1; a.context_length + 1]).expect_err("long");
    assert!(e.to_string().contains("context length"), "{e}");
    assert!(m.decoder(a.context_length + 1).is_err());
    let mut dec = m.decoder(4).unwrap();
    let e = dec.feed(&[1, 2, 3, 4, 5]).expect_err("overflow");
    assert!(e.to_string().contains("KV cache"), "{e}");
    assert_eq!(dec.position(), 0, "a refused feed caches nothing");
    let mut w = tiny_weights();
    w.layers[0].k = Linear::dense(3, a.hidden_size, vec![0.0; 3 * a.hidden_size]).unwrap();
    let e = GpuForward::new(common::gpu(), w).err().expect("bad shape");
    assert!(e.to_string().contains("config implies"), "{e}");
    let mut other = tiny_weights();
    other.layers.push(other.layers[0].clone());
    other.arch.num_layers = 2;
    let two = GpuForward::new(common::gpu(), other).unwrap();
    let mut cache = two.new_cache(4).unwrap();
    let e = m.feed(&mut cache, &[1], false).expect_err("foreign cache");
    assert!(e.to_string().contains("another model"), "{e}");
}

#[test]
fn open_forward_picks_the_device() {
    let dir = tempfile::tempdir().unwrap();
    let path = common::tiny_llama(dir.path(), None);
    let _ = common::gpu(); // fails with instructions when there is no adapter
    let adapter = std::env::var("LLMQ_TEST_ADAPTER").ok();
    let m = open_forward(&path, DeviceChoice::Vulkan, adapter.as_deref()).unwrap();
    assert!(m.device().starts_with("vulkan: "), "{}", m.device());
    let cpu = open_forward(&path, DeviceChoice::Cpu, None).unwrap();
    assert!(cpu.device().starts_with("cpu"), "{}", cpu.device());
    let want = cpu.logits(TINY_TOKENS).unwrap();
    check(
        "open_forward vulkan",
        &m.logits(TINY_TOKENS).unwrap(),
        &want,
        1e-4,
        max_abs(&want),
    );
    // auto: a real GPU if there is one, else the CPU (never a software rasterizer).
    let real_gpu = list_adapters()
        .iter()
        .any(|a| ["DiscreteGpu", "IntegratedGpu", "VirtualGpu"].contains(&a.device_type.as_str()));
    let auto = open_forward(&path, DeviceChoice::Auto, None).unwrap();
    assert_eq!(
        !auto.device().starts_with("cpu"),
        real_gpu,
        "auto chose {}",
        auto.device()
    );
    assert!(open_forward(&path, DeviceChoice::Cpu, Some("x")).is_err());
}

/// The real SmolLM2-135M (dense reference weights from the GGUF): GPU vs
/// CPU logits. One test only: lavapipe is slow.
#[test]
fn smollm2_gpu_logits_match_cpu() {
    const TOKENS: &[u32] = &[
        1, 9690, 198, 2683, 359, 253, 5356, 2896, 28, 1170, 314, 260, 3358, 282,
    ];
    let t = Instant::now();
    let w = LlamaWeights::load(&ModelView::open(common::smollm2_gguf()).unwrap()).unwrap();
    let vocab = w.arch.vocab_size;
    eprintln!("load: {:.2?}", t.elapsed());
    let t = Instant::now();
    let cpu = CpuForward::new(w.clone()).logits(TOKENS).unwrap();
    eprintln!("cpu forward, {} tokens: {:.2?}", TOKENS.len(), t.elapsed());
    let t = Instant::now();
    let m = GpuForward::new(common::gpu(), w).unwrap();
    eprintln!("upload to {}: {:.2?}", m.device(), t.elapsed());
    let t = Instant::now();
    let gpu = m.logits(TOKENS).unwrap();
    eprintln!("gpu forward, {} tokens: {:.2?}", TOKENS.len(), t.elapsed());
    let max = max_abs(&cpu);
    let d = max_diff(&gpu, &cpu);
    eprintln!(
        "max |Δlogit| = {d:.3e}, max |logit| = {max:.3}, relative {:.3e}",
        d / max
    );
    check("smollm2", &gpu, &cpu, 1e-4, max);
    for (p, (a, b)) in gpu
        .chunks_exact(vocab)
        .zip(cpu.chunks_exact(vocab))
        .enumerate()
    {
        assert_eq!(argmax(a), argmax(b), "argmax differs at position {p}");
    }
}

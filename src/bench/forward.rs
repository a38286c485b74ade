//! Whole-model speed: prefill (prompt processing) tokens/s as a share of the
//! device's dense matmul rate, and decode tokens/s as a share of its copy
//! bandwidth (decoding one token reads every weight once), both measured in
//! the same run.

use super::matmul::{best_of, cpu_copy_bandwidth, gbps, gpu_copy_bandwidth};
use super::peer::PeerComparison;
use crate::backend::gpu::hessian;
use crate::backend::gpu::matmul_dense::{encode_dense, GpuDenseWeights};
use crate::backend::gpu::GpuContext;
use crate::error::Result;
use crate::eval::size::LinearStorage;
use crate::gemm;
use crate::model::forward::Forward;
use serde::Serialize;
use std::fmt;
use std::time::Instant;

/// The device's limits the forward is compared with.
#[derive(Clone, Debug, Serialize)]
pub struct PeakRates {
    /// Dense f32 matmul rate, GFLOP/s.
    pub matmul_gflops: f64,
    /// Copy bandwidth, GB/s (bytes read + written).
    pub copy_gbps: f64,
    pub detail: String,
}

impl PeakRates {
    /// The CPU's SGEMM rate (512 tokens × 2048 × 2048, the shape of a
    /// prefill) and memcpy bandwidth.
    pub fn cpu(iters: usize) -> Result<Self> {
        let (m, k, n) = (512, 2048, 2048);
        let x: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 * 0.01).collect();
        let w: Vec<f32> = (0..n * k).map(|i| (i % 7) as f32 * 0.01).collect();
        let t = best_of(iters, || {
            std::hint::black_box(gemm::dense_xwt(&x, &w, m, k, n));
            Ok(())
        })?;
        let gflops = 2.0 * (m * k * n) as f64 / t.as_secs_f64() / 1e9;
        let copy = cpu_copy_bandwidth(iters)?;
        Ok(Self {
            matmul_gflops: gflops,
            copy_gbps: copy.copy_gbps,
            detail: format!("sgemm {m}x{k}x{n}: {gflops:.1} GFLOP/s; {}", copy.detail),
        })
    }
}

impl PeakRates {
    /// The GPU's f32 matmul rate: the better of the forward's own dense
    /// matmul kernel (512 or, on a software rasterizer, 64 tokens × 2048 ×
    /// 2048) and the register-tiled GEMM of the Hessian kernel (XᵀX, 4096
    /// or 256 tokens × 2048 or 512 features), so ratios are taken against
    /// the fastest f32 kernel we have; and the buffer copy bandwidth.
    pub fn gpu(ctx: &GpuContext, iters: usize) -> Result<Self> {
        let software = ctx.adapter.device_type == "Cpu";
        let (m, k, n) = (if software { 64 } else { 512 }, 2048, 2048);
        let w: Vec<f32> = (0..n * k).map(|i| (i % 7) as f32 * 0.01).collect();
        let x: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 * 0.01).collect();
        let wd = GpuDenseWeights::upload(ctx, &w, n, k)?;
        let xb = ctx.upload("bench.x", bytemuck::cast_slice(&x))?;
        let yb = ctx.storage("bench.y", (m * n * 4) as u64)?;
        // Several dispatches per submission so launch overhead is amortised.
        let reps = if software { 1 } else { 20 };
        let t = best_of(iters, || {
            let mut enc = ctx.encoder();
            for _ in 0..reps {
                encode_dense(ctx, &mut enc, &wd, &xb, &yb, m)?;
            }
            ctx.submit_and_wait(enc)
        })?;
        let dense = 2.0 * (m * k * n * reps) as f64 / t.as_secs_f64() / 1e9;
        let (tokens, cols) = if software { (256, 512) } else { (4096, 2048) };
        let mut best = f64::INFINITY;
        for _ in 0..iters.max(1) {
            let t = hessian::time_accumulate(ctx, cols, tokens, reps)?;
            best = best.min(t.as_secs_f64());
        }
        let gemm = (reps * tokens * cols * (cols + 1)) as f64 / best / 1e9;
        let gflops = dense.max(gemm);
        let copy = gpu_copy_bandwidth(ctx, iters)?;
        Ok(Self {
            matmul_gflops: gflops,
            copy_gbps: copy.copy_gbps,
            detail: format!(
                "dense matmul kernel {m}x{k}x{n}: {dense:.1} GFLOP/s, tiled GEMM (Hessian \
                 kernel) {tokens}x{cols}x{cols}: {gemm:.1} GFLOP/s; {} {:.1} GB/s",
                copy.detail, copy.copy_gbps
            ),
        })
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ForwardBenchReport {
    pub device: String,
    pub prompt_tokens: usize,
    pub prefill_seconds: f64,
    pub prefill_tokens_per_second: f64,
    pub prefill_gflops: f64,
    /// `prefill_gflops / peak.matmul_gflops`.
    pub prefill_share_of_matmul: f64,
    pub decode_tokens: usize,
    pub decode_tokens_per_second: f64,
    /// Resident weight bytes read per decoded token
    /// ([`crate::model::forward::Forward::step_bytes`]) over its time.
    pub decode_gbps: f64,
    /// `decode_gbps / peak.copy_gbps`.
    pub decode_share_of_copy: f64,
    pub peak: PeakRates,
    /// What the model file's block linears store, when the caller knows
    /// the file.
    pub linears: Option<LinearStorage>,
    /// llama.cpp on the same work, when the caller ran it ([`super::peer`]).
    pub peer: Option<PeerComparison>,
}

impl fmt::Display for ForwardBenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "device: {}", self.device)?;
        writeln!(f, "limits: {}", self.peak.detail)?;
        writeln!(
            f,
            "prefill {} tokens: {:.2} s, {:.1} tok/s, {:.1} GFLOP/s = {:.0}% of the matmul rate",
            self.prompt_tokens,
            self.prefill_seconds,
            self.prefill_tokens_per_second,
            self.prefill_gflops,
            100.0 * self.prefill_share_of_matmul
        )?;
        write!(
            f,
            "decode {} tokens: {:.1} tok/s, {:.2} GB/s of resident weights = {:.0}% of copy bandwidth",
            self.decode_tokens,
            self.decode_tokens_per_second,
            self.decode_gbps,
            100.0 * self.decode_share_of_copy
        )?;
        if let Some(s) = &self.linears {
            write!(f, "\n{s}")?;
        }
        if let Some(p) = &self.peer {
            write!(f, "\n{p}")?;
        }
        Ok(())
    }
}

/// FLOPs of one fresh forward over `t` tokens: every linear and the head
/// (2 per weight per token) plus causal attention (q·k and p·v).
pub fn forward_flops(model: &dyn Forward, t: usize) -> f64 {
    let a = model.arch();
    let (h, f, hd) = (a.hidden_size, a.intermediate_size, a.head_dim());
    let kv = a.num_kv_heads * hd;
    let per_layer = (h * h * 2 + 2 * h * kv + 3 * h * f) as f64;
    let linears = a.num_layers as f64 * per_layer + (a.vocab_size * h) as f64;
    let attn =
        a.num_layers as f64 * a.num_heads as f64 * 4.0 * hd as f64 * (t * (t + 1) / 2) as f64;
    2.0 * linears * t as f64 + attn
}

/// Times a `prompt_tokens` prefill (best of `iters`) and `decode_tokens`
/// greedy decoding steps after a short prompt.
pub fn run_forward_bench(
    model: &dyn Forward,
    peak: PeakRates,
    prompt_tokens: usize,
    decode_tokens: usize,
    iters: usize,
) -> Result<ForwardBenchReport> {
    let a = model.arch();
    let vocab = a.vocab_size as u32;
    let prompt: Vec<u32> = (0..prompt_tokens as u32)
        .map(|i| (i * 7919 + 13) % vocab)
        .collect();
    let t = best_of(iters, || model.logits(&prompt).map(|_| ()))?;
    let prefill = t.as_secs_f64();
    let prefill_gflops = forward_flops(model, prompt_tokens) / prefill / 1e9;

    let mut dec = model.decoder(16 + decode_tokens)?;
    let mut logits = dec.feed(&prompt[..16.min(prompt.len())])?;
    let t0 = Instant::now();
    for _ in 0..decode_tokens {
        let next = crate::generate::sampler::argmax(&logits) as u32;
        logits = dec.feed(&[next])?;
    }
    let decode = t0.elapsed();
    let bytes = model.step_bytes() as f64;
    let per_token = decode / decode_tokens.max(1) as u32;
    let decode_gbps = gbps(bytes, per_token);
    Ok(ForwardBenchReport {
        device: model.device(),
        prompt_tokens,
        prefill_seconds: prefill,
        prefill_tokens_per_second: prompt_tokens as f64 / prefill,
        prefill_gflops,
        prefill_share_of_matmul: prefill_gflops / peak.matmul_gflops,
        decode_tokens,
        decode_tokens_per_second: decode_tokens as f64 / decode.as_secs_f64(),
        decode_gbps,
        decode_share_of_copy: decode_gbps / peak.copy_gbps,
        peak,
        linears: None,
        peer: None,
    })
}

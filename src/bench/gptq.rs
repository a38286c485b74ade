//! GPTQ speed: the time of each phase (calibration forward, Hessians,
//! Cholesky, column updates, error report) with its FLOP count, against the
//! dense matmul rate measured on the same device in the same run.
//!
//! Two workloads: a whole model ([`bench_model`], the real pipeline into a
//! temporary folder), and a stack of synthetic layers of any shape
//! ([`bench_synthetic`], e.g. Llama-7B's 4096/11008 with 65 536 calibration
//! tokens) that runs the same kernels per layer on random weights and
//! activations, for judging a GPU on models this machine cannot hold.

use super::forward::PeakRates;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::model::forward::ops::{self, AttnShape, RopeTable};
use crate::pipeline::gptq::{transfer_since, Phase, Phases};
use crate::pipeline::quantize::{quantize_model_with, CancelToken, QuantizeConfig};
use crate::quant::gptq::{self, GptqOptions, HessianAccumulation};
use crate::quant::{rtn, QuantScheme};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::fmt;
use std::time::Instant;

/// One phase against the matmul rate.
#[derive(Clone, Debug, Serialize)]
pub struct PhaseRate {
    pub phase: String,
    pub seconds: f64,
    pub gflop: f64,
    pub gflops: f64,
    /// Achieved rate / dense matmul rate.
    pub share_of_matmul: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct GptqBenchReport {
    /// `GPTQ`, `GPTVQ`, ...
    pub method: String,
    pub workload: String,
    pub device: String,
    pub peak: PeakRates,
    pub layers: usize,
    /// Seconds per layer: mean, min, max.
    pub layer_seconds: [f64; 3],
    pub phases: Vec<PhaseRate>,
    /// Wall time of the run and the time its FLOPs need at the matmul rate.
    pub seconds: f64,
    pub ideal_seconds: f64,
    /// `seconds / ideal_seconds`.
    pub ratio_to_ideal: f64,
    pub peak_host_bytes: Option<u64>,
    pub peak_gpu_bytes: Option<u64>,
    /// Host → GPU and GPU → host bytes of the whole run.
    pub gpu_transfer_bytes: Option<(u64, u64)>,
    /// Synthetic runs: minutes a model of `extrapolate_layers` such layers
    /// would take.
    pub extrapolated: Option<(usize, f64)>,
}

fn rates(phases: &Phases, peak: &PeakRates) -> Vec<PhaseRate> {
    let row = |name: &str, p: Phase| {
        let gflops = p.flops / 1e9 / p.seconds.max(1e-12);
        PhaseRate {
            phase: name.into(),
            seconds: p.seconds,
            gflop: p.flops / 1e9,
            gflops,
            share_of_matmul: gflops / peak.matmul_gflops,
        }
    };
    let mut out = vec![
        row("calibration forward", phases.forward),
        row("hessian", phases.hessian),
        row("cholesky + triangular inverse", phases.factor),
        row("column loop (updates)", phases.update),
    ];
    if phases.em.seconds > 0.0 {
        out.push(row("gptvq EM", phases.em));
        out.push(row("gptvq codebook update", phases.codebook));
    }
    out.push(row("error report (baselines too)", phases.report));
    out.push(row("total", phases.total()));
    out
}

fn spread(v: &[f64]) -> [f64; 3] {
    let mean = v.iter().sum::<f64>() / v.len().max(1) as f64;
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(0.0, f64::max);
    [mean, if min.is_finite() { min } else { 0.0 }, max]
}

/// Whole-model GPTQ with `config` (its output goes to a temporary folder).
pub fn bench_model(
    backend: &dyn Backend,
    peak: PeakRates,
    config: &QuantizeConfig,
) -> Result<GptqBenchReport> {
    let tmp = tempfile::tempdir().map_err(|e| Error::io(std::env::temp_dir(), e))?;
    let mut config = config.clone();
    config.out = tmp.path().join("out");
    let start = Instant::now();
    let report = quantize_model_with(backend, &config, &mut |_| {}, &CancelToken::default())?;
    let seconds = start.elapsed().as_secs_f64();
    let g = report
        .gptq
        .ok_or_else(|| Error::Config("the GPTQ benchmark needs --method gptq settings".into()))?;
    let total = g.phases.total();
    let ideal = total.flops / 1e9 / peak.matmul_gflops;
    let per_layer: Vec<f64> = g.layers.iter().map(|l| l.seconds).collect();
    Ok(GptqBenchReport {
        workload: format!(
            "{} ({} x {} calibration tokens, {})",
            config.model.display(),
            g.calib.windows(),
            g.calib.len,
            config.label()
        ),
        method: g.solver.label().to_string(),
        device: backend.name(),
        phases: rates(&g.phases, &peak),
        peak,
        layers: g.layers.len(),
        layer_seconds: spread(&per_layer),
        seconds,
        ideal_seconds: ideal,
        ratio_to_ideal: seconds / ideal,
        peak_host_bytes: g.peak_host_bytes,
        peak_gpu_bytes: g.peak_gpu_bytes,
        gpu_transfer_bytes: g.gpu_transfer_bytes,
        extrapolated: None,
    })
}

/// Shape of a synthetic decoder layer.
#[derive(Clone, Copy, Debug)]
pub struct SyntheticLayer {
    pub hidden: usize,
    pub kv: usize,
    pub ffn: usize,
    /// Calibration tokens, and tokens per chunk (whole windows).
    pub tokens: usize,
    pub chunk: usize,
    /// Tokens per calibration window, and per attention head.
    pub seq: usize,
    pub head_dim: usize,
}

impl SyntheticLayer {
    /// Llama-7B: 4096 hidden, 11008 MLP, no GQA, 128 × 512 tokens.
    pub fn llama7b() -> Self {
        Self {
            hidden: 4096,
            kv: 4096,
            ffn: 11008,
            tokens: 65536,
            chunk: 2048,
            seq: 512,
            head_dim: 128,
        }
    }
}

/// `layers` synthetic layers: per layer, the pipeline's kernels on random
/// weights and activations: Hessians of the four input sites over
/// `tokens` (in chunks), one factorisation per site, GPTQ of the seven
/// linears, each quantized linear applied to every token, and the rest of
/// the calibration forward (norms, RoPE, SwiGLU and residual adds on the
/// host, causal attention on the backend) over every token. Random data
/// generation is not timed.
pub fn bench_synthetic(
    backend: &dyn Backend,
    peak: PeakRates,
    shape: SyntheticLayer,
    layers: usize,
    scheme: &QuantScheme,
    opts: &GptqOptions,
    extrapolate_layers: usize,
) -> Result<GptqBenchReport> {
    let s = shape;
    let heads_fit =
        s.head_dim > 0 && s.hidden.is_multiple_of(s.head_dim) && s.kv.is_multiple_of(s.head_dim);
    let whole_windows = s.seq > 0 && s.chunk.is_multiple_of(s.seq);
    if s.tokens == 0 || s.chunk == 0 || !whole_windows || layers == 0 || !heads_fit {
        return Err(Error::Config(format!(
            "synthetic GPTQ benchmark: tokens, windows and layers must be > 0, chunks whole \
             windows, and hidden/kv multiples of the head size (got {s:?}, {layers} layers)"
        )));
    }
    crate::pipeline::memory::reset_host_peak();
    backend.reset_memory_peak();
    let transfers_before = backend.transfer_bytes();
    let mut rng = StdRng::seed_from_u64(7);
    let mut phases = Phases::default();
    let mut per_layer = Vec::with_capacity(layers);
    let start = Instant::now();
    // Sites: (input width, linears reading it as (rows)).
    let sites: [(usize, Vec<usize>); 4] = [
        (s.hidden, vec![s.hidden, s.kv, s.kv]),
        (s.hidden, vec![s.hidden]),
        (s.hidden, vec![s.ffn, s.ffn]),
        (s.ffn, vec![s.hidden]),
    ];
    let mut untimed = 0.0;
    for layer in 0..layers {
        let t_layer = Instant::now();
        let mut layer_untimed = 0.0;
        for (site, (cols, rows_list)) in sites.iter().enumerate() {
            let cols = *cols;
            let name = format!("synthetic layer {layer} site {site}");
            // All chunks first (untimed), so the timed accumulation includes
            // the GPU's work, which overlaps the host's between batches.
            let t = Instant::now();
            let mut batches = Vec::new();
            let mut done = 0;
            while done < s.tokens {
                let n = s.chunk.min(s.tokens - done);
                batches.push((n, random_activations(&mut rng, n, cols)));
                done += n;
            }
            layer_untimed += t.elapsed().as_secs_f64();
            let t = Instant::now();
            let mut acc = HessianAccumulation::new(backend, cols)?;
            for (n, x) in &batches {
                acc.add_batch(&name, x, *n)?;
            }
            let hess = acc.finish()?;
            phases.hessian.seconds += t.elapsed().as_secs_f64();
            phases.hessian.flops += (s.tokens * cols * (cols + 1)) as f64;
            let x = batches.pop().map(|(_, x)| x).unwrap_or_default();
            drop(batches);
            let f = gptq::factor(backend, &name, &hess.h, cols, opts)?;
            phases.factor.seconds += f.seconds;
            phases.factor.flops += gptq::flops(0, cols, opts.block).0;
            for &rows in rows_list {
                let t = Instant::now();
                let w: Vec<f32> = (0..rows * cols)
                    .map(|_| (rng.gen::<f32>() - 0.5) * 0.05)
                    .collect();
                layer_untimed += t.elapsed().as_secs_f64();
                // RTN, scored against GPTQ in the same trace call, as the
                // pipeline does.
                let t = Instant::now();
                let rq = rtn::quantize(backend, &name, &w, rows, cols, scheme)?;
                let rw = backend.dequantize(&rq)?;
                let rtn_seconds = t.elapsed().as_secs_f64();
                let (q, r) = gptq::quantize_factored(
                    backend,
                    &name,
                    &w,
                    rows,
                    cols,
                    &hess.h,
                    &f,
                    scheme,
                    opts,
                    &[&rw],
                )?;
                phases.update.seconds += r.seconds_update;
                phases.update.flops += gptq::flops(rows, cols, opts.block).1;
                std::hint::black_box(&r.baseline_errors);
                phases.report.seconds += rtn_seconds + r.seconds_error;
                // Three traces (W, GPTQ's ΔW, RTN's ΔW) of 2·rows·cols² each.
                phases.report.flops += 6.0 * (rows * cols * cols) as f64;
                // The calibration forward through this linear, chunk by chunk
                // (the last random chunk stands in for every chunk), the
                // weight uploaded once as the pipeline does.
                let t = Instant::now();
                let q = crate::encoding::EncodedTensor::Affine(q);
                let linear = backend.resident_linear(&q)?;
                phases.forward.seconds += t.elapsed().as_secs_f64();
                let mut done = 0;
                while done < s.tokens {
                    let n = s.chunk.min(s.tokens - done).min(x.len() / cols);
                    let t = Instant::now();
                    std::hint::black_box(linear.apply(&x[..n * cols], n)?);
                    phases.forward.seconds += t.elapsed().as_secs_f64();
                    phases.forward.flops += 2.0 * (n * rows * cols) as f64;
                    done += n;
                }
            }
        }
        layer_untimed += host_forward(backend, &s, &mut rng, &mut phases)?;
        per_layer.push(t_layer.elapsed().as_secs_f64() - layer_untimed);
        untimed += layer_untimed;
    }
    let seconds = start.elapsed().as_secs_f64() - untimed;
    let total = phases.total();
    let ideal = total.flops / 1e9 / peak.matmul_gflops;
    let mean = per_layer.iter().sum::<f64>() / layers as f64;
    Ok(GptqBenchReport {
        method: "GPTQ".into(),
        workload: format!(
            "{layers} synthetic layers: hidden {}, kv {}, MLP {}, {} calibration tokens, {}",
            s.hidden,
            s.kv,
            s.ffn,
            s.tokens,
            scheme.label()
        ),
        device: backend.name(),
        phases: rates(&phases, &peak),
        peak,
        layers,
        layer_seconds: spread(&per_layer),
        seconds,
        ideal_seconds: ideal,
        ratio_to_ideal: seconds / ideal,
        peak_host_bytes: crate::pipeline::memory::host_peak_bytes(),
        peak_gpu_bytes: backend.memory_peak(),
        gpu_transfer_bytes: transfer_since(backend, transfers_before),
        extrapolated: Some((extrapolate_layers, mean * extrapolate_layers as f64 / 60.0)),
    })
}

/// The calibration forward of one layer besides its matmuls, chunk by
/// chunk over every token as the pipeline runs it: four RMSNorms over the
/// hidden state (q/k/v Hessian, attention, gate/up Hessian, MLP), RoPE of q
/// and k and causal attention over the chunk's windows, SwiGLU, two
/// residual adds and the finite check. One random chunk stands in for
/// every chunk; returns the untimed seconds (making it).
fn host_forward(
    backend: &dyn Backend,
    s: &SyntheticLayer,
    rng: &mut StdRng,
    phases: &mut Phases,
) -> Result<f64> {
    let t = Instant::now();
    let n = s.chunk.min(s.tokens).div_ceil(s.seq) * s.seq;
    let mut uniform =
        |len: usize| -> Vec<f32> { (0..len).map(|_| rng.gen::<f32>() - 0.5).collect() };
    let mut hidden = uniform(n * s.hidden);
    let (mut q, mut k, v) = (uniform(n * s.hidden), uniform(n * s.kv), uniform(n * s.kv));
    let (mut gate, up) = (uniform(n * s.ffn), uniform(n * s.ffn));
    let norm_w = vec![1.0f32; s.hidden];
    let rope = RopeTable::new(0, s.seq, &ops::rope_inv_freq(s.head_dim, 10000.0));
    let shape = AttnShape {
        heads: s.hidden / s.head_dim,
        kv_heads: s.kv / s.head_dim,
        head_dim: s.head_dim,
    };
    let untimed = t.elapsed().as_secs_f64();
    let windows = n / s.seq;
    let mut done = 0;
    while done < s.tokens {
        let t = Instant::now();
        for _ in 0..4 {
            std::hint::black_box(ops::rms_norm(&hidden, &norm_w, 1e-5));
        }
        for b in 0..windows {
            let (qs, ks) = (s.seq * s.hidden, s.seq * s.kv);
            rope.apply(&mut q[b * qs..(b + 1) * qs], shape.heads, true);
            rope.apply(&mut k[b * ks..(b + 1) * ks], shape.kv_heads, true);
        }
        let attn = backend.causal_attention(&q, &k, &v, windows, s.seq, shape)?;
        ops::silu_mul(&mut gate, &up);
        ops::add_in_place(&mut hidden, &attn);
        ops::add_in_place(&mut hidden, &q);
        rtn::check_finite("synthetic hidden state", &hidden)?;
        phases.forward.seconds += t.elapsed().as_secs_f64();
        phases.forward.flops += (4 * 4 * n * s.hidden + 6 * n * s.ffn) as f64
            + (windows * shape.heads * 4 * s.seq * s.seq * s.head_dim) as f64;
        done += n;
    }
    Ok(untimed)
}

/// Activations with a few strong shared directions (like real ones, so the
/// Hessian is not a scaled identity).
fn random_activations(rng: &mut StdRng, tokens: usize, cols: usize) -> Vec<f32> {
    let dirs: Vec<f32> = (0..4 * cols).map(|_| rng.gen::<f32>() - 0.5).collect();
    let mut x = Vec::with_capacity(tokens * cols);
    for _ in 0..tokens {
        let c: [f32; 4] = std::array::from_fn(|_| rng.gen::<f32>() * 2.0 - 1.0);
        for j in 0..cols {
            let shared: f32 = (0..4).map(|k| c[k] * dirs[k * cols + j]).sum();
            x.push(shared + 0.3 * (rng.gen::<f32>() - 0.5));
        }
    }
    x
}

impl fmt::Display for GptqBenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} on {}: {}", self.method, self.device, self.workload)?;
        writeln!(f, "matmul rate: {}", self.peak.detail)?;
        writeln!(
            f,
            "| phase | seconds | GFLOP | GFLOP/s | share of matmul rate |\n|---|---:|---:|---:|---:|"
        )?;
        for p in &self.phases {
            writeln!(
                f,
                "| {} | {:.2} | {:.1} | {:.1} | {:.0}% |",
                p.phase,
                p.seconds,
                p.gflop,
                p.gflops,
                100.0 * p.share_of_matmul
            )?;
        }
        let [mean, min, max] = self.layer_seconds;
        writeln!(
            f,
            "per layer: {mean:.2} s mean ({min:.2} – {max:.2}) over {} layers",
            self.layers
        )?;
        writeln!(
            f,
            "whole run: {:.1} s; its FLOPs at the matmul rate: {:.1} s; ratio {:.2}",
            self.seconds, self.ideal_seconds, self.ratio_to_ideal
        )?;
        if let Some((n, minutes)) = self.extrapolated {
            writeln!(f, "a {n}-layer model of such layers: {minutes:.1} min")?;
        }
        if let Some(b) = self.peak_host_bytes {
            writeln!(
                f,
                "peak host memory: {:.1} MiB",
                b as f64 / (1 << 20) as f64
            )?;
        }
        if let Some(b) = self.peak_gpu_bytes {
            writeln!(f, "peak GPU memory: {:.1} MiB", b as f64 / (1 << 20) as f64)?;
        }
        if let Some((up, down)) = self.gpu_transfer_bytes {
            let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
            writeln!(
                f,
                "GPU transfers: {:.2} GiB to the GPU, {:.2} GiB back ({:.2} GiB per layer)",
                gib(up),
                gib(down),
                gib(up + down) / self.layers.max(1) as f64
            )?;
        }
        Ok(())
    }
}

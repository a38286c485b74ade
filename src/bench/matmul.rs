//! Dequant-matmul benchmark: copy bandwidth of each device as the roofline,
//! then GEMV/GEMM time, weight GB/s, fraction of copy bandwidth, GFLOP/s and
//! the GPU/CPU ratio for each shape and encoding (INT4/INT8 linear codes,
//! VQ codebooks).

use crate::backend::gpu::matmul::{time_matmul, GpuQuantWeights};
use crate::backend::gpu::matmul_i8::time_matmul_i8;
use crate::backend::gpu::GpuContext;
use crate::encoding::affine::packing::pack_codes;
use crate::encoding::affine::scheme::{Granularity, QuantScheme};
use crate::encoding::ggml::{GgmlTensor, GgmlType};
use crate::encoding::{EncodedTensor, QuantizedTensor, VqScheme, VqTensor};
use crate::error::{Error, Result};
use rayon::prelude::*;
use serde::Serialize;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What to measure. `Default` is the full set (4096×4096 GEMV and 64/128-token
/// GEMM, 4 and 8 bits, group 128) on the CPU only; add a GPU context to compare.
#[derive(Clone)]
pub struct MatmulBenchOptions {
    pub cpu: bool,
    pub gpu: Option<Arc<GpuContext>>,
    /// `(rows, cols, tokens)` per case.
    pub shapes: Vec<(usize, usize, usize)>,
    pub bits: Vec<u32>,
    pub group: usize,
    /// VQ encodings measured beside the linear codes.
    pub vq: Vec<VqScheme>,
    /// llama.cpp block types measured beside them (the kernels `eval` runs
    /// GGUF files with).
    pub ggml: Vec<GgmlType>,
    /// Timed repetitions per case (after one warm-up).
    pub iters: usize,
}

impl Default for MatmulBenchOptions {
    fn default() -> Self {
        Self {
            cpu: true,
            gpu: None,
            shapes: vec![
                (4096, 4096, 1),
                (11008, 4096, 1),
                (4096, 4096, 64),
                (4096, 4096, 128),
                (4096, 4096, 512),
            ],
            bits: vec![4, 8],
            group: 128,
            // GPTVQ 2D at 2.125 and 3.125 bits per weight (the paper's
            // groups), 1D at 3.125 and 4D at 2.25: one case per CPU kernel
            // (16 centroids; up to 8, permuted; more, gathered).
            vq: [(2, 2, 2048), (2, 3, 8192), (1, 3, 512), (4, 2, 32768)]
                .into_iter()
                .filter_map(|(d, b, g)| VqScheme::new(d, b, g, 8).ok())
                .collect(),
            ggml: vec![GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4K, GgmlType::Q6K],
            iters: 10,
        }
    }
}

impl MatmulBenchOptions {
    /// Small shapes that finish in seconds on a software rasterizer (lavapipe),
    /// with the GEMV weight still larger than typical caches.
    pub fn quick() -> Self {
        Self {
            shapes: vec![(11008, 4096, 1), (1024, 1024, 16), (512, 1024, 64)],
            iters: 3,
            ..Self::default()
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct DeviceBandwidth {
    pub device: String,
    /// Best copy bandwidth, GB/s (bytes read + bytes written, over time).
    pub copy_gbps: f64,
    pub detail: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct MatmulBenchRow {
    pub device: String,
    pub kernel: String,
    /// `int4 g128`, `VQ 2D 2b g2048 int8`, ...
    pub encoding: String,
    /// Stored bits per weight of the encoding at this shape.
    pub bits_per_weight: f64,
    pub rows: usize,
    pub cols: usize,
    pub tokens: usize,
    pub ms: f64,
    /// Resident weight bytes ([`crate::encoding::Encoding::resident_bytes`]:
    /// codes, f32 scales, u8 zeros) read per matmul, over time.
    pub weight_gbps: f64,
    /// `weight_gbps / copy_gbps` of the same device.
    pub copy_fraction: f64,
    pub gflops: f64,
    /// CPU time / GPU time for the same case (GPU rows only).
    pub gpu_speedup: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct MatmulBenchReport {
    pub bandwidth: Vec<DeviceBandwidth>,
    pub rows: Vec<MatmulBenchRow>,
}

impl fmt::Display for MatmulBenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "copy bandwidth:")?;
        for b in &self.bandwidth {
            writeln!(
                f,
                "  {:<40} {:>8.2} GB/s  ({})",
                b.device, b.copy_gbps, b.detail
            )?;
        }
        writeln!(
            f,
            "{:<28} {:<5} {:<20} {:>5} {:>13} {:>6} {:>10} {:>9} {:>7} {:>9} {:>8}",
            "device",
            "kind",
            "encoding",
            "bpw",
            "rows x cols",
            "tokens",
            "ms",
            "weight GB/s",
            "of copy",
            "GFLOP/s",
            "gpu/cpu"
        )?;
        for r in &self.rows {
            let dev: String = r.device.chars().take(28).collect();
            writeln!(
                f,
                "{:<28} {:<5} {:<20} {:>5.2} {:>13} {:>6} {:>10.3} {:>11.2} {:>6.0}% {:>9.2} {:>8}",
                dev,
                r.kernel,
                r.encoding,
                r.bits_per_weight,
                format!("{}x{}", r.rows, r.cols),
                r.tokens,
                r.ms,
                r.weight_gbps,
                100.0 * r.copy_fraction,
                r.gflops,
                r.gpu_speedup
                    .map(|s| format!("{s:.2}x"))
                    .unwrap_or_default()
            )?;
        }
        write!(
            f,
            "weight GB/s: resident bytes (codes, f32 scales, u8 zeros; VQ: indices, f32 \
             codebooks) read per matmul over its time"
        )?;
        Ok(())
    }
}

/// Deterministic weights: the benchmark measures speed, not accuracy.
fn bench_tensor(rows: usize, cols: usize, bits: u32, group: usize) -> Result<QuantizedTensor> {
    let g = if group > 0 && cols.is_multiple_of(group) {
        Granularity::Group(group)
    } else {
        Granularity::PerChannel
    };
    let scheme = QuantScheme::new(bits, false, g)?;
    let maxq = scheme.max_code() as usize;
    let codes: Vec<u32> = (0..rows * cols)
        .map(|i| ((i.wrapping_mul(2654435761)) >> 7) as u32 % (maxq as u32 + 1))
        .collect();
    let n = rows * scheme.groups_per_row(cols);
    Ok(QuantizedTensor {
        rows,
        cols,
        scheme,
        packed: pack_codes(&codes, rows, cols, bits),
        scales: (0..n).map(|i| 0.01 + (i % 7) as f32 * 1e-3).collect(),
        zeros: (0..n).map(|i| (i % (maxq + 1)) as u8).collect(),
    })
}

/// Deterministic ggml blocks of `ty`: 16 distinct rows quantized by the
/// type's reference quantizer, repeated (quantizing every row of a 4096 ×
/// 11008 weight would take longer than the measurement).
fn bench_ggml_tensor(rows: usize, cols: usize, ty: GgmlType) -> Result<GgmlTensor> {
    let distinct = rows.min(16);
    let x: Vec<f32> = (0..distinct * cols)
        .map(|i| (((i * 7919) % 1013) as f32 - 506.0) * 4e-5)
        .collect();
    let pattern = crate::encoding::ggml::quantize("bench", ty, &x, cols)?;
    let rb = pattern.len() / distinct;
    let data: Vec<u8> = (0..rows)
        .flat_map(|r| {
            pattern[(r % distinct) * rb..(r % distinct + 1) * rb]
                .iter()
                .copied()
        })
        .collect();
    Ok(GgmlTensor {
        ty,
        rows,
        cols,
        data,
    })
}

/// Deterministic VQ weights of `scheme` (rows rounded up to whole row groups).
fn bench_vq_tensor(rows: usize, cols: usize, scheme: VqScheme) -> VqTensor {
    let rows = rows.next_multiple_of(scheme.rows_per_codebook());
    let n = scheme.codebooks(rows, cols);
    let per_row = cols / scheme.dim as usize;
    let k = scheme.centroids() as u32;
    let idx: Vec<u32> = (0..rows * per_row)
        .map(|i| ((i.wrapping_mul(2654435761)) >> 7) as u32 % k)
        .collect();
    VqTensor {
        rows,
        cols,
        scheme,
        indices: pack_codes(&idx, rows, per_row, scheme.index_bits()),
        codebooks: (0..n * scheme.codebook_len())
            .map(|i| ((i % 255) as f32 - 127.0) * 1e-3)
            .collect(),
        scales: vec![1e-3; n],
        svd: None,
        row_scales: None,
    }
}

pub(crate) fn best_of(iters: usize, mut f: impl FnMut() -> Result<()>) -> Result<Duration> {
    f()?;
    let mut best = Duration::MAX;
    for _ in 0..iters.max(1) {
        let t = Instant::now();
        f()?;
        best = best.min(t.elapsed());
    }
    Ok(best)
}

pub(crate) fn gbps(bytes: f64, t: Duration) -> f64 {
    bytes / t.as_secs_f64().max(1e-12) / 1e9
}

/// memcpy of a 256 MiB buffer, single- and multi-threaded; best of both.
pub(crate) fn cpu_copy_bandwidth(iters: usize) -> Result<DeviceBandwidth> {
    let n = 64 << 20; // f32s
    let src = vec![1f32; n];
    let mut dst = vec![0f32; n];
    let bytes = 2.0 * (n * 4) as f64;
    let one = best_of(iters, || {
        dst.copy_from_slice(&src);
        Ok(())
    })?;
    let threads = rayon::current_num_threads();
    let chunk = n.div_ceil(threads);
    let many = best_of(iters, || {
        dst.par_chunks_mut(chunk)
            .zip(src.par_chunks(chunk))
            .for_each(|(d, s)| d.copy_from_slice(s));
        Ok(())
    })?;
    let (g1, gn) = (gbps(bytes, one), gbps(bytes, many));
    Ok(DeviceBandwidth {
        device: cpu_name(),
        copy_gbps: g1.max(gn),
        detail: format!("memcpy 256 MiB: 1 thread {g1:.2} GB/s, {threads} threads {gn:.2} GB/s"),
    })
}

/// `copy_buffer_to_buffer` of a large buffer, `iters` copies per submission.
pub(crate) fn gpu_copy_bandwidth(ctx: &GpuContext, iters: usize) -> Result<DeviceBandwidth> {
    let size = (ctx.limits().max_buffer_size / 2).clamp(1 << 20, 256 << 20) & !3;
    let make = |label| {
        ctx.buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage: wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    };
    let (a, b) = (make("bench.copy.src"), make("bench.copy.dst"));
    let copies = iters.max(1);
    let t = best_of(2, || {
        let mut enc = ctx.encoder();
        for _ in 0..copies {
            enc.copy_buffer_to_buffer(&a, 0, &b, 0, size);
        }
        ctx.submit_and_wait(enc)
    })?;
    let g = gbps(2.0 * size as f64 * copies as f64, t);
    Ok(DeviceBandwidth {
        device: ctx.adapter.short(),
        copy_gbps: g,
        detail: format!("copy_buffer_to_buffer {} MiB x {copies}", size >> 20),
    })
}

fn cpu_name() -> String {
    format!("cpu ({} threads)", rayon::current_num_threads())
}

fn row(
    device: String,
    w: &EncodedTensor,
    tokens: usize,
    t: Duration,
    copy_gbps: f64,
    gpu_speedup: Option<f64>,
) -> MatmulBenchRow {
    let (rows, cols) = (w.rows(), w.cols());
    let e = w.encoding();
    let g = gbps(e.resident_bytes(rows, cols) as f64, t);
    MatmulBenchRow {
        device,
        kernel: if tokens <= crate::backend::gpu::matmul::GEMV_MAX_TOKENS {
            "gemv".into()
        } else {
            "gemm".into()
        },
        encoding: e.label(),
        bits_per_weight: e.stored_bits_per_weight(rows, cols),
        rows,
        cols,
        tokens,
        ms: t.as_secs_f64() * 1e3,
        weight_gbps: g,
        copy_fraction: g / copy_gbps.max(1e-12),
        gflops: 2.0 * (rows * cols * tokens) as f64 / t.as_secs_f64().max(1e-12) / 1e9,
        gpu_speedup,
    }
}

/// The INT8-activation path beside an 8-bit or 4-bit case: its weights
/// (an 8-bit case's codes as 8-bit symmetric ones, the weights W8A8
/// takes; a 4-bit case as it is, W4A8), activations quantized per token
/// inside the timing (the cost such a linear pays); `None` for other cases.
fn int8_weights(w: &EncodedTensor) -> Result<Option<QuantizedTensor>> {
    let EncodedTensor::Affine(q) = w else {
        return Ok(None);
    };
    let mut q = q.clone();
    if q.scheme.bits == 8 {
        q.scheme = QuantScheme::new(8, true, q.scheme.granularity)?;
        q.zeros.iter_mut().for_each(|z| *z = 128);
    }
    Ok(
        crate::encoding::act8::check_i8_scheme(&q.scheme, q.cols, q.cols)
            .is_ok()
            .then_some(q),
    )
}

fn int8_activation_row(
    w: &EncodedTensor,
    x: &[f32],
    tokens: usize,
    iters: usize,
    copy_gbps: f64,
) -> Result<Option<MatmulBenchRow>> {
    let Some(sym) = int8_weights(w)? else {
        return Ok(None);
    };
    let q = &sym;
    let time = best_of(iters, || {
        let a = crate::encoding::act8::quantize_dynamic(x, tokens, q.cols)?;
        crate::encoding::act8::matmul_i8(&sym, &a).map(|_| ())
    })?;
    let mut r = row(
        cpu_name(),
        &EncodedTensor::Affine(sym),
        tokens,
        time,
        copy_gbps,
        None,
    );
    r.encoding = format!("{} A8", r.encoding);
    Ok(Some(r))
}

pub fn run_matmul_bench(opts: &MatmulBenchOptions) -> Result<MatmulBenchReport> {
    if !opts.cpu && opts.gpu.is_none() {
        return Err(Error::Config(
            "matmul bench: choose the CPU, a GPU, or both".into(),
        ));
    }
    let mut bandwidth = Vec::new();
    let cpu_bw = if opts.cpu {
        let b = cpu_copy_bandwidth(opts.iters.clamp(2, 5))?;
        let g = b.copy_gbps;
        bandwidth.push(b);
        g
    } else {
        0.0
    };
    let gpu_bw = match &opts.gpu {
        Some(ctx) => {
            let b = gpu_copy_bandwidth(ctx, opts.iters.clamp(2, 10))?;
            let g = b.copy_gbps;
            bandwidth.push(b);
            g
        }
        None => 0.0,
    };
    // Every case: an encoding at a shape.
    let mut cases = Vec::new();
    for &shape in &opts.shapes {
        let (r, c, t) = shape;
        for &bits in &opts.bits {
            cases.push((
                EncodedTensor::Affine(bench_tensor(r, c, bits, opts.group)?),
                t,
            ));
        }
        for &s in &opts.vq {
            if s.check_shape("bench", r.next_multiple_of(s.rows_per_codebook()), c)
                .is_ok()
            {
                cases.push((EncodedTensor::Vq(bench_vq_tensor(r, c, s)), t));
            }
        }
        for &ty in opts
            .ggml
            .iter()
            .filter(|ty| c.is_multiple_of(ty.block_size()))
        {
            cases.push((EncodedTensor::Ggml(bench_ggml_tensor(r, c, ty)?), t));
        }
    }
    let mut rows = Vec::new();
    for (w, t) in &cases {
        let (t, c) = (*t, w.cols());
        let x: Vec<f32> = (0..t * c)
            .map(|i| ((i % 97) as f32 - 48.0) * 0.01)
            .collect();
        let mut cpu_time = None;
        if opts.cpu {
            let time = best_of(opts.iters, || w.matmul(&x, t).map(|_| ()))?;
            cpu_time = Some(time);
            rows.push(row(cpu_name(), w, t, time, cpu_bw, None));
            if let Some(r) = int8_activation_row(w, &x, t, opts.iters, cpu_bw)? {
                rows.push(r);
            }
        }
        if let Some(ctx) = &opts.gpu {
            let gw = GpuQuantWeights::upload_encoded(ctx, w)?;
            let time = time_matmul(ctx, &gw, t, opts.iters)?;
            let speedup = cpu_time.map(|c| c.as_secs_f64() / time.as_secs_f64().max(1e-12));
            rows.push(row(ctx.adapter.short(), w, t, time, gpu_bw, speedup));
            if let Some(sym) = int8_weights(w)? {
                let gw = GpuQuantWeights::upload(ctx, &sym)?;
                let time = time_matmul_i8(ctx, &gw, t, opts.iters)?;
                let mut r = row(
                    ctx.adapter.short(),
                    &EncodedTensor::Affine(sym),
                    t,
                    time,
                    gpu_bw,
                    None,
                );
                r.encoding = format!("{} A8", r.encoding);
                rows.push(r);
            }
        }
    }
    Ok(MatmulBenchReport { bandwidth, rows })
}

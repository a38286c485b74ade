//! Dequant-matmul benchmark: copy bandwidth of each device as the roofline,
//! then GEMV/GEMM time, weight GB/s, fraction of copy bandwidth, GFLOP/s and
//! the GPU/CPU ratio for each shape and bit width.

use crate::backend::gpu::matmul::{time_matmul, GpuQuantWeights};
use crate::backend::gpu::GpuContext;
use crate::encoding::affine::matmul as cpu_matmul;
use crate::encoding::affine::packing::pack_codes;
use crate::encoding::affine::scheme::{Granularity, QuantScheme};
use crate::encoding::QuantizedTensor;
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
            ],
            bits: vec![4, 8],
            group: 128,
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
    pub bits: u32,
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
            "{:<28} {:<5} {:>4} {:>13} {:>6} {:>10} {:>9} {:>7} {:>9} {:>8}",
            "device",
            "kind",
            "bits",
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
                "{:<28} {:<5} {:>4} {:>13} {:>6} {:>10.3} {:>11.2} {:>6.0}% {:>9.2} {:>8}",
                dev,
                r.kernel,
                r.bits,
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
            "weight GB/s: resident bytes (codes, f32 scales, u8 zeros) read per matmul over its time"
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

#[allow(clippy::too_many_arguments)]
fn row(
    device: String,
    bits: u32,
    (rows, cols, tokens): (usize, usize, usize),
    t: Duration,
    weight_bytes: f64,
    copy_gbps: f64,
    gpu_speedup: Option<f64>,
) -> MatmulBenchRow {
    let g = gbps(weight_bytes, t);
    MatmulBenchRow {
        device,
        kernel: if tokens <= crate::backend::gpu::matmul::GEMV_MAX_TOKENS {
            "gemv".into()
        } else {
            "gemm".into()
        },
        bits,
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
    let mut rows = Vec::new();
    for &bits in &opts.bits {
        for &shape in &opts.shapes {
            let (r, c, t) = shape;
            let q = bench_tensor(r, c, bits, opts.group)?;
            let x: Vec<f32> = (0..t * c)
                .map(|i| ((i % 97) as f32 - 48.0) * 0.01)
                .collect();
            let mut cpu_time = None;
            if opts.cpu {
                let resident = q.resident_bytes() as f64;
                let time = best_of(opts.iters, || cpu_matmul::matmul(&q, &x, t).map(|_| ()))?;
                cpu_time = Some(time);
                rows.push(row(cpu_name(), bits, shape, time, resident, cpu_bw, None));
            }
            if let Some(ctx) = &opts.gpu {
                let w = GpuQuantWeights::upload(ctx, &q)?;
                let time = time_matmul(ctx, &w, t, opts.iters)?;
                let speedup = cpu_time.map(|c| c.as_secs_f64() / time.as_secs_f64().max(1e-12));
                rows.push(row(
                    ctx.adapter.short(),
                    bits,
                    shape,
                    time,
                    w.resident_bytes() as f64,
                    gpu_bw,
                    speedup,
                ));
            }
        }
    }
    Ok(MatmulBenchReport { bandwidth, rows })
}

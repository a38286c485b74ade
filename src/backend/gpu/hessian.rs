//! Thin wrapper over `shaders/hessian.wgsl`: the running GPTQ Hessian
//! `H ← H·n/(n+b) + (2/(n+b))·XᵀX`, resident on the GPU from the first
//! batch to the last so only the inputs travel. H is split by rows and X by
//! tokens so that every binding fits the context's binding limit (a
//! Llama-7B down_proj Hessian, 11008² f32 = 485 MB, is four chunks on a
//! 128 MiB one). The kernel computes the lower triangle; `finish` mirrors it.

use super::context::{Binding, GpuContext, Kernel};
use super::{f32_bytes, row_chunks, GpuBuffer, GEMM_TILE};
use crate::backend::{check_hessian_batch, ResidentHessian};
use crate::error::{Error, Result};
use bytemuck::{Pod, Zeroable};
use std::ops::Range;
use std::sync::Arc;

const SOURCE: &str = with_tile_gemm!("hessian.wgsl");

/// Mirrors `Params` in hessian.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    h_rows: u32,
    row0: u32,
    cols: u32,
    tokens: u32,
    alpha: f32,
    beta: f32,
    _pad0: u32,
    _pad1: u32,
}

const BINDINGS: [Binding; 3] = [
    Binding::Uniform,
    Binding::StorageRead,
    Binding::StorageReadWrite,
];

/// The running Hessian on the GPU; see [`ResidentHessian`].
pub struct GpuHessian<'a> {
    ctx: &'a GpuContext,
    cols: usize,
    n_seen: usize,
    /// Row chunks of H and their buffers.
    chunks: Vec<(Range<usize>, GpuBuffer)>,
    kernel: Arc<Kernel>,
    /// The previous batch, still running: waited for before the next one
    /// is queued, so the host prepares batch k+1 while the GPU runs batch k
    /// and at most two batches of inputs are staged.
    pending: Option<wgpu::SubmissionIndex>,
}

impl<'a> GpuHessian<'a> {
    /// Uploads `h` (`[cols, cols]`, already checked), or allocates zeros
    /// when nothing has been seen yet.
    pub fn new(ctx: &'a GpuContext, h: Vec<f32>, cols: usize, n_seen: usize) -> Result<Self> {
        let col_tiles = cols.div_ceil(GEMM_TILE);
        if col_tiles > ctx.max_workgroups() as usize {
            return Err(Error::Gpu(format!(
                "Hessian of {cols} columns needs {col_tiles} workgroups in one dimension, more \
                 than {}",
                ctx.max_workgroups()
            )));
        }
        let kernel = ctx.kernel("hessian.accumulate", SOURCE, "accumulate", &BINDINGS)?;
        let chunks = row_chunks(ctx, cols, cols * 4)?
            .into_iter()
            .map(|r| {
                let buf = match n_seen {
                    0 => ctx.storage("hessian.h", (r.len() * cols * 4) as u64)?,
                    _ => ctx.upload("hessian.h", f32_bytes(&h[r.start * cols..r.end * cols]))?,
                };
                Ok((r, buf))
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            ctx,
            cols,
            n_seen,
            chunks,
            kernel,
            pending: None,
        })
    }
}

impl ResidentHessian for GpuHessian<'_> {
    fn add(&mut self, x: &[f32], tokens: usize) -> Result<()> {
        let (ctx, cols) = (self.ctx, self.cols);
        check_hessian_batch(cols, x, tokens)?;
        if tokens == 0 {
            return Ok(());
        }
        let n_total = (self.n_seen + tokens) as f64;
        let alpha0 = (self.n_seen as f64 / n_total) as f32;
        let beta = (2.0 / n_total) as f32;
        if let Some(index) = self.pending.take() {
            ctx.wait_for(index)?;
        }
        // X by tokens, uploaded once and used by every chunk of H rows.
        let x_chunks: Vec<(usize, GpuBuffer)> = row_chunks(ctx, tokens, cols * 4)?
            .into_iter()
            .map(|r| {
                let buf = ctx.upload("hessian.x", f32_bytes(&x[r.start * cols..r.end * cols]))?;
                Ok((r.len(), buf))
            })
            .collect::<Result<_>>()?;
        // One encoder: wgpu orders the passes that write the same chunk.
        let mut enc = ctx.encoder();
        let mut uniforms = Vec::with_capacity(self.chunks.len() * x_chunks.len());
        for (rows, hbuf) in &self.chunks {
            for (i, (t, xbuf)) in x_chunks.iter().enumerate() {
                let params = Params {
                    h_rows: rows.len() as u32,
                    row0: rows.start as u32,
                    cols: cols as u32,
                    tokens: *t as u32,
                    alpha: if i == 0 { alpha0 } else { 1.0 },
                    beta,
                    _pad0: 0,
                    _pad1: 0,
                };
                uniforms.push(ctx.uniform("hessian.params", &params));
                let u = &uniforms[uniforms.len() - 1];
                ctx.encode(
                    &mut enc,
                    &self.kernel,
                    &[u, xbuf, hbuf],
                    [
                        cols.div_ceil(GEMM_TILE) as u32,
                        rows.len().div_ceil(GEMM_TILE) as u32,
                        1,
                    ],
                );
            }
        }
        self.pending = Some(ctx.submit(enc)?);
        self.n_seen += tokens;
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<Vec<f32>> {
        if let Some(index) = self.pending.take() {
            self.ctx.wait_for(index)?;
        }
        let cols = self.cols;
        let mut h = Vec::with_capacity(cols * cols);
        for (rows, buf) in &self.chunks {
            h.extend(self.ctx.read::<f32>(buf, rows.len() * cols)?);
        }
        super::super::cpu::gptq::mirror_lower(&mut h, cols);
        Ok(h)
    }
}

/// Encodes `reps` accumulations of a `[tokens, cols]` X into a `[cols,
/// cols]` H (both resident, one dispatch each) into one submission and
/// waits: the kernel's own speed, as the reference GEMM rate of
/// benchmarks. Returns the elapsed time; the useful FLOPs are
/// `reps · tokens · cols · (cols + 1)` (the lower triangle).
pub fn time_accumulate(
    ctx: &GpuContext,
    cols: usize,
    tokens: usize,
    reps: usize,
) -> Result<std::time::Duration> {
    if cols.div_ceil(GEMM_TILE) > ctx.max_workgroups() as usize
        || (cols * cols * 4) as u64 > ctx.max_binding()
        || (tokens * cols * 4) as u64 > ctx.max_binding()
    {
        return Err(Error::Gpu(format!(
            "Hessian timing shape {tokens} x {cols} exceeds the limits of {}",
            ctx.adapter.short()
        )));
    }
    let kernel = ctx.kernel("hessian.accumulate", SOURCE, "accumulate", &BINDINGS)?;
    let x: Vec<f32> = (0..tokens * cols)
        .map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5)
        .collect();
    let xb = ctx.upload("hessian.x", f32_bytes(&x))?;
    let hb = ctx.storage("hessian.h", (cols * cols * 4) as u64)?;
    let params = Params {
        h_rows: cols as u32,
        row0: 0,
        cols: cols as u32,
        tokens: tokens as u32,
        alpha: 1.0,
        beta: 1.0 / tokens as f32,
        _pad0: 0,
        _pad1: 0,
    };
    let uniform = ctx.uniform("hessian.params", &params);
    let tiles = [
        cols.div_ceil(GEMM_TILE) as u32,
        cols.div_ceil(GEMM_TILE) as u32,
        1,
    ];
    let mut warm = ctx.encoder();
    ctx.encode(&mut warm, &kernel, &[&uniform, &xb, &hb], tiles);
    ctx.submit_and_wait(warm)?;
    let mut enc = ctx.encoder();
    for _ in 0..reps.max(1) {
        ctx.encode(&mut enc, &kernel, &[&uniform, &xb, &hb], tiles);
    }
    let start = std::time::Instant::now();
    ctx.submit_and_wait(enc)?;
    Ok(start.elapsed())
}
